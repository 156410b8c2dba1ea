"""``crabs sweep``: the grid, one run folder per trial, resume after a killed driver, a failing trial
reported while the others finish. With a real local Ray (2 CPUs)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import TINY as TINY_RUN

from crabs import sweep
from crabs.cli import main
from crabs.config import Config
from crabs.envs import read_ledger

# a CRABS run of a few seconds (tests/tiny.py's, 3 epochs), as --set crabs:KEY=VALUE items
TINY = {**{k: v for k, v in TINY_RUN.items() if k != "task"}, "epochs": 3}


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


TINY_SETS = [x for k, v in _flat(TINY) for x in ("--set", f"crabs:{k}={json.dumps(v)}")]
SWEEP_ARGS = ["sweep", "--tasks", "upright", "tilt", "--algorithms", "crabs", "sac", "--seeds", "0",
              "--steps", "300", "--quiet", *TINY_SETS]
TRIALS = ["upright/crabs/seed0", "upright/sac/seed0", "tilt/crabs/seed0", "tilt/sac/seed0"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # pragma: no cover
        pytest.skip(f"Ray cannot start here: {e}")
    yield ray
    ray.shutdown()


def test_grid_names_and_configs():
    trials = sweep.expand(["upright", "Tilt"], ["crabs", "sac"], [0, 1, 0])
    assert [t.name for t in trials] == [f"{task}/{a}/seed{s}" for task in ("upright", "tilt")
                                        for a in ("crabs", "sac") for s in (0, 1)]
    assert trials[0].folder("S") == Path("S", "upright", "crabs", "seed0")
    # a grid dimension, scoped to CRABS: its trials double, the baseline's do not
    grid = sweep.parse_grid(["crabs:sac.tau=[0.005, 0.01]"])
    trials = sweep.expand(["upright"], ["crabs", "sac"], [0], grid)
    assert [t.name for t in trials] == ["upright/crabs/sac.tau=0.005/seed0",
                                        "upright/crabs/sac.tau=0.01/seed0", "upright/sac/seed0"]
    sets = sweep.parse_sets(["sac.gamma=0.9", "crabs:epochs=3", "sac:total_steps=200"])
    cfg = sweep.trial_config(trials[1], sets)
    assert (cfg.epochs, cfg.sac.tau, cfg.sac.gamma, cfg.seed) == (3, 0.01, 0.9, 0)
    cfg = sweep.trial_config(sweep.Trial("tilt", "sac", 4), sets, epochs=7, steps=None)
    assert (cfg.algorithm, cfg.task, cfg.total_steps, cfg.seed, cfg.sac.gamma) == ("sac", "tilt", 200, 4, 0.9)
    assert sweep.trial_config(sweep.Trial("tilt", "crabs", 4), sets, epochs=7).epochs == 7
    # the ablation (Sec. 6) is an algorithm of the sweep: CRABS with the handcrafted h, never trained
    hand = sweep.trial_config(sweep.Trial("tilt", "crabs_handcrafted", 4), sets, epochs=7)
    assert (hand.barrier.init, hand.barrier.learn, hand.epochs) == ("handcrafted", False, 7)
    assert hand.sac.gamma == 0.9
    assert sweep.runner_class("crabs_handcrafted") is sweep.runner_class("crabs")
    # a key that only CRABS has, given to every trial: refused up front, naming the trial
    with pytest.raises(ValueError, match="trial upright/sac/seed0: .*epochs"):
        sweep.trial_config(sweep.Trial("upright", "sac", 0), sweep.parse_sets(["epochs=3"]))
    for bad, match in ((["seed=3"], "--seeds"), (["ppo:epochs=3"], "not an algorithm")):
        with pytest.raises(ValueError, match=match):
            sweep.parse_sets(bad)
    with pytest.raises(ValueError, match="a YAML list"):
        sweep.parse_grid(["sac.tau=0.01"])
    with pytest.raises(ValueError, match="unknown algorithm"):
        sweep.expand(["upright"], ["ppo"], [0])


def test_without_ray_one_clear_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sweep, "_tune", None)
    assert main(["sweep", "--tasks", "upright", "--algorithms", "sac", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "crabs: error: crabs sweep needs Ray: pip install 'crabs[sweep]'"
    assert not (tmp_path / "s").exists()


def test_one_sweep_per_folder(tmp_path):
    held = sweep._lock(tmp_path)
    with pytest.raises(OSError, match="another crabs sweep is running"):
        sweep._lock(tmp_path)
    held.close()
    sweep._lock(tmp_path).close()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _partial_steps(led: list[dict]) -> int:
    """Steps of episodes the kill cut short: their last heartbeat, as the monitor recounts them."""
    ended = {r["episode"] for r in led if r["event"] == "episode"}
    last: dict[int, int] = {}
    for r in led:
        if r["event"] == "progress" and r["episode"] not in ended:
            last[r["episode"]] = max(last.get(r["episode"], 0), r["episode_step"])
    return sum(last.values())


def test_sweep_killed_then_resumed_by_rerunning(tmp_path, request, capsys):
    out = tmp_path / "sweep"
    # 1. the sweep in its own process (and session), killed once a trial has finished and a CRABS
    # trial is under way with a checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "crabs.cli", *SWEEP_ARGS, "--out", str(out),
                             "--num-cpus", "2"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started, ready = time.time(), False
    try:
        while time.time() - started < 120 and proc.poll() is None:
            done = [t for t in TRIALS if (out / t / "summary.json").exists()]
            under_way = [t for t in TRIALS if (out / t / "checkpoints" / "last.pt").exists()
                         and not (out / t / "summary.json").exists() and "crabs" in t]
            if done and under_way:
                ready = True
                break
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)   # the driver dies without a word
        log = proc.communicate()[0].decode(errors="replace")
        time.sleep(0.5)
        for pid in _session_pids(proc.pid):  # Ray's own processes of that session
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert ready, f"no finished and no interrupted trial after {time.time() - started:.0f} s:\n{log[-3000:]}"
    time.sleep(1)   # let the killed workers' last writes land
    finished = {t: {"summary": (out / t / "summary.json").read_text(),
                    "ledger": (out / t / "ledger.jsonl").read_text(),
                    "mtime": (out / t / "summary.json").stat().st_mtime_ns}
                for t in TRIALS if (out / t / "summary.json").exists()}
    interrupted = {t: (out / t / "ledger.jsonl").read_text() if (out / t / "ledger.jsonl").exists() else ""
                   for t in TRIALS if (out / t / "config.yaml").exists() and t not in finished}
    assert [t for t in interrupted if "crabs" in t]
    assert not (out / sweep.SWEEP_FILE).exists()

    # 2. the same command again (in this process, on a local Ray of 2 CPUs)
    request.getfixturevalue("local_ray")
    t0 = time.time()
    assert main([*SWEEP_ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / sweep.SWEEP_FILE).read_text())
    print(f"rerun {time.time() - t0:.1f} s, kill after {len(finished)} finished: {sorted(finished)}")
    assert [r["run"] for r in rows] == TRIALS and all(t in printed for t in TRIALS)
    for r in rows:
        t, folder = r["run"], out / r["run"]
        assert r["error"] is None and r["violations"] == 0
        expected = "skipped" if t in finished else "resumed" if t in interrupted else "trained"
        assert r["status"] == expected, (t, r)
        for f in ("config.yaml", "ledger.jsonl", "metrics.csv", "summary.json", "checkpoints/last.pt",
                  "checkpoints/policy.pt"):
            assert (folder / f).exists(), (t, f)
        if t not in finished:   # (a run killed while drawing, after its summary, has no plots)
            assert (folder / "figure2.png").exists()
            assert (folder / "figure3.png").exists() == (r["algorithm"] == "crabs")
        summary = json.loads((folder / "summary.json").read_text())
        for key in ("task", "algorithm", "seed", "env_steps", "final_eval_return", "wall_clock_s"):
            assert r[key] == summary[key], (t, key)
        assert (summary["epochs"] == 3) if r["algorithm"] == "crabs" else (summary["evaluations"] >= 1)
        led = read_ledger(folder / "ledger.jsonl")
        eps = [x for x in led if x["event"] == "episode"]
        # counters continuous: every step is the ledger's, episodes numbered without a gap (an
        # episode the kill cut short counts up to its last heartbeat)
        assert summary["env_steps"] == sum(x["length"] for x in eps) + _partial_steps(led)
        assert [x["episode"] for x in eps] == sorted({x["episode"] for x in eps})
        if t in finished:   # nothing finished is redone
            assert (folder / "summary.json").read_text() == finished[t]["summary"]
            assert (folder / "ledger.jsonl").read_text() == finished[t]["ledger"]
            assert (folder / "summary.json").stat().st_mtime_ns == finished[t]["mtime"]
        if t in interrupted:   # the ledger goes on from where the kill left it
            text = (folder / "ledger.jsonl").read_text()
            assert text.startswith(interrupted[t]) and len(text) > len(interrupted[t])


def test_failing_trials_are_reported_and_the_others_finish(tmp_path, local_ray, capsys):
    out = tmp_path / "sweep"
    # tilt/sac/seed0 already holds a CRABS run, upright/sac/seed0 a SAC run of other settings (999
    # steps): those two trials raise, seed 1's run
    foreign, other = out / "tilt" / "sac" / "seed0", out / "upright" / "sac" / "seed0"
    for folder, cfg in ((foreign, Config.from_dict({"task": "tilt"})),
                        (other, sweep.trial_config(sweep.Trial("upright", "sac", 0), steps=999))):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(json.dumps(cfg.to_dict()))
    argv = ["sweep", "--tasks", "upright", "tilt", "--algorithms", "sac", "--seeds", "0", "1",
            "--steps", "200", "--quiet", "--out", str(out)]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    rows = {r["run"]: r for r in json.loads((out / sweep.SWEEP_FILE).read_text())}
    assert list(rows) == ["upright/sac/seed0", "upright/sac/seed1", "tilt/sac/seed0", "tilt/sac/seed1"]
    for t in ("upright/sac/seed1", "tilt/sac/seed1"):
        assert rows[t]["status"] == "trained" and rows[t]["error"] is None and rows[t]["env_steps"] >= 200
        assert (out / t / "summary.json").exists()
    for t, why in (("tilt/sac/seed0", "holds a crabs run, not sac"),
                   ("upright/sac/seed0", "holds a run with other settings (total_steps)")):
        row = rows[t]
        assert row["status"] == "failed" and row["env_steps"] is None, row
        assert row["error"].startswith("ValueError: ") and why in row["error"], row
        assert t in printed and why in printed
        assert (Path(row["tune_dir"]) / "error.txt").exists()
        assert not (out / t / "ledger.jsonl").exists()   # the run there was not touched


def test_the_baselines_budget_is_a_crabs_runs_steps_per_task():
    """BUDGET follows the task files: a CRABS run's real steps when no episode ends early (start-up
    episodes and evaluation, per epoch its exploration episodes and one evaluation, the final
    evaluation), rounded up by less than 10%, so that changing a task's epochs cannot leave the
    baselines' like-for-like budget behind."""
    from crabs.baselines.config import BUDGET
    from crabs.config import load_config
    from crabs.envs import get_task
    for task, budget in BUDGET.items():
        cfg, horizon = load_config(task=task), get_task(task).spec.horizon
        e = cfg.explore
        explore = e.episodes_per_epoch + e.uniform_episodes + e.noisy_episodes
        evaluations = cfg.epochs // cfg.eval_every
        steps = horizon * (cfg.init_episodes + 1 + cfg.epochs * explore + evaluations + 1)
        assert steps <= budget < 1.1 * steps, (task, steps, budget)


def test_budgets_set_the_baselines_steps_per_task(tmp_path):
    trials = sweep.expand(["upright", "move"], ["crabs", "sac"], [0])
    steps = {s["name"]: s["config"].get("total_steps")
             for s in sweep.trial_specs(trials, tmp_path, budget="3x")}
    # three times each task's CRABS-sized budget; CRABS itself is untouched
    assert steps == {"upright/crabs/seed0": None, "upright/sac/seed0": 24000,
                     "move/crabs/seed0": None, "move/sac/seed0": 270000}
    paper = sweep.trial_specs(trials, tmp_path, budget="paper")
    assert [s["config"].get("total_steps") for s in paper] == [None, 1_000_000, None, 1_000_000]
    # the default leaves the baselines' config as a sweep without --budget had it (0: the BUDGET)
    assert [s["config"].get("total_steps") for s in sweep.trial_specs(trials, tmp_path)] == [None, 0, None, 0]
    with pytest.raises(ValueError, match="not both"):
        sweep.trial_specs(trials, tmp_path, steps=300, budget="paper")
    for bad in ("3", "x", "-2x", "lots"):
        with pytest.raises(ValueError, match="'crabs', 'paper' or a positive multiple"):
            sweep.trial_specs(trials, tmp_path, budget=bad)
