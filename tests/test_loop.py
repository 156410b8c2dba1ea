"""A reduced Upright run end to end (0 violations, every part exercised) and resume after an
interruption continuing the same counters."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from tiny import TINY

from crabs.config import Config
from crabs.envs import read_ledger
from crabs.loop import CRABS, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    summary = train("upright", Config.from_dict(TINY), out, progress=False)
    return out, summary


def test_smoke_run_is_safe_and_complete(tiny_run):
    out, summary = tiny_run
    assert summary["violations"] == 0
    assert summary["epochs"] == 2 and summary["task"] == "upright"
    for key in ("env_steps", "episodes", "final_eval_return", "certified_volume", "wall_clock_s", "seed",
                "model_failures"):
        assert key in summary
    assert json.loads((out / "summary.json").read_text()) == summary
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    # the summary's model failures and exits from C_h are the ledger's: every one is written there
    led = read_ledger(out / "ledger.jsonl")
    assert summary["model_failures"] == sum(r["event"] == "model_failure" for r in led)
    assert summary["exits_C_h"] == sum(r["event"] == "exit_C_h" for r in led)
    assert summary["model_failures"] >= sum(int(r["model_failures"] or 0) for r in rows)
    # "certified" is the last epoch's check, not the delivered best pair's (which is certified)
    assert summary["certified"] == (rows[-1]["policy_certified"] == "True")
    assert summary["certified_epochs"] == sum(r["policy_certified"] == "True" for r in rows) >= 1
    for f in ("config.yaml", "metrics.csv", "ledger.jsonl", "figure2.png", "figure3.png",
              "figure3_epochs.png", "checkpoints/last.pt", "checkpoints/policy.pt"):
        assert (out / f).exists(), f
    # Figure 3 over the epochs: h and the evaluation's trajectory of start-up and of every epoch
    hist = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["c_h_history"]
    assert [r["epoch"] for r in hist] == [0, 1, 2]
    assert all(r["trajectory"].shape[1] == 2 and "f.0.weight" in r["h"] for r in hist)
    eps = [r for r in read_ledger(out / "ledger.jsonl") if r["event"] == "episode"]
    assert sum(r["length"] for r in eps) == summary["env_steps"]
    assert len(eps) == summary["episodes"]
    assert {r["tag"] for r in eps} >= {"startup", "explore", "eval"}  # every real step is ledgered
    assert 0 < summary["certified_volume"] < 0.5
    with open(out / "metrics.csv") as fh:  # where each evaluation ended, and h there (h(s0) = 1 - log 2)
        rows = [r for r in csv.DictReader(fh) if r["eval_return"]]
    assert len(rows) == 3 and all(len(r["eval_end_state"].split()) == 2 for r in rows)
    assert all(float(r["eval_min_h"]) <= min(float(r["eval_end_h"]), 0.307) for r in rows)
    assert len(summary["final_eval_end_state"]) == 2   # the final evaluation's diagnostics too
    assert summary["final_eval_min_h"] <= min(summary["final_eval_end_h"], 0.307)
    # final_policy "best": the delivered policy is the evaluated one of its epoch (Upright from s0 is
    # deterministic, so its final evaluation repeats that epoch's return), no certified epoch scored
    # more, and policy.pt holds it
    k = summary["final_policy_epoch"]
    assert summary["final_policy"] == "best" and 0 <= k <= 2
    assert summary["final_eval_return"] == pytest.approx(float(rows[k]["eval_return"]), abs=1e-9)
    certified = [float(r["eval_return"]) for r in rows if r.get("policy_certified") == "True"]
    assert all(summary["final_eval_return"] >= x - 1e-9 for x in certified)
    assert summary["last_epoch_eval_return"] == pytest.approx(float(rows[-1]["eval_return"]))
    assert torch.load(out / "checkpoints" / "policy.pt", weights_only=True)["meta"]["epoch"] == k


def test_judge_reads_the_last_and_the_delivered_certificate(tiny_run):
    from crabs.judge import judge_run, load_barrier

    out, summary = tiny_run
    j = judge_run(out)
    assert j["task"] == "upright" and 0 < j["certified"] < j["viable"]
    assert j["best"] is not None and 0 < j["best"]["certified"] < 1
    # the delivered h is the last epoch's exactly when the best pair is the last one: judged twice, the
    # same fraction; another epoch's h certifies another fraction of the grid
    same = summary["final_policy_epoch"] == summary["epochs"]
    assert (j["best"]["certified"] == j["certified"]) == same
    with pytest.raises(ValueError, match="which must be 'last' or 'best'"):
        load_barrier(out, "first")


def test_verify_finds_R1_failing_at_an_s0_on_the_state_box_edge():
    """R.1 is not true by construction when s0 lies on the state box's edge (a user's s0 on a
    physical bound, as held-out cstr's full tank): the box term makes h(s0) = 1 - log 2 - 1 there.
    verify reports it, and its verdict says so."""
    from crabs.barrier import Barrier
    from crabs.config import BarrierConfig
    from crabs.envs import SafetySpec
    from crabs.verify import r1_at_s0, summary_line

    spec = SafetySpec(state_names=("c", "T"), limits={"T": 1.0}, s0=(1.0, 0.0), horizon=10)
    inside = Barrier.for_box(spec, BarrierConfig(hidden=(8,)), [0.0, -0.5], [1.2, 1.0])
    edge = Barrier.for_box(spec, BarrierConfig(hidden=(8,)), [0.0, -0.5], [1.0, 1.0])
    assert r1_at_s0(inside, spec) == {"h_s0": pytest.approx(1 - math.log(2)), "s0_in_C_h": True}
    assert r1_at_s0(edge, spec) == {"h_s0": pytest.approx(-math.log(2)), "s0_in_C_h": False}
    r = {"has_certificate": True, "sound": True, "R3_model_holds": True, "R3_holds": True,
         "R1_R2": {"certified": 0.5, "certified_but_unsafe": 0, **r1_at_s0(edge, spec)},
         "R3_model": {"adversary_max_U": -0.1, "adversary_chains": 8, "uniform_U_positive": 0,
                      "uniform_certified_states": 10}, "R3_true_dynamics": {}}
    assert summary_line(r).endswith("-> sound, R.1 FAILS at s0 (h(s0) -0.693), R.3 holds under the model")


def test_verify_audits_the_delivered_pair_apart_from_the_run(tiny_run, tmp_path, capsys):
    """crabs verify: R.1/R.2 hold by construction, a fresh adversary and true-dynamics rollouts
    from certified states; the audit's steps go to their own ledger, the run's counts stay."""
    import shutil

    from crabs.cli import main
    from crabs.envs import ledger_totals
    from crabs.verify import _worst_text, load_run, summary_line, verify_run, worst_counter_example

    out, summary = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    r = verify_run(run, n=4000, states=10, horizon=60, chains_mult=1, steps=10)
    assert r["R1_R2"]["certified_but_unsafe"] == 0 and 0 < r["R1_R2"]["certified"] < 0.5
    assert r["R1_R2"]["s0_in_C_h"] and r["R1_R2"]["h_s0"] > 0    # R.1 at s0 itself
    assert r["R3_model"]["adversary_chains"] == TINY["mala"]["chains"]
    t = r["R3_true_dynamics"]
    assert t["starts"] == 10 and t["rollouts_violating"] == 0 and r["sound"] and r["has_certificate"]
    assert r["pair_epoch"] == summary["final_policy_epoch"] and r["epochs"] == summary["epochs"]
    assert r["oracle"]["certified_not_viable_states"] == 0
    assert r["R3_model"]["edge_U_positive"] == 0 and r["R3_model"]["edge_width"] == 0.05
    m = r["R3_model"]   # the closed loop under the model, from the first 10 uniform certified states
    assert m["rollout_starts"] == 10 and m["rollout_steps"] == 60 and m["rollout_U_positive"] == 0
    assert (m["worst_counter_example"] is None) == (m["adversary_max_U"] <= 0)   # none where U <= 0
    assert 0 < m["rollout_certified_states"] <= 600
    assert json.loads((run / "verify" / "verify.json").read_text()) == r
    audit = ledger_totals(read_ledger(run / "verify" / "ledger.jsonl"))
    assert 10 <= audit.env_steps <= 600 and audit.episodes == 10
    assert ledger_totals(read_ledger(run / "ledger.jsonl")).env_steps == summary["env_steps"]
    # a policy that pushes the pendulum over: the audit finds the violations, exit status 1
    blob = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for state in (blob["sac"]["policy"], blob["best"]["policy"], blob["safe_policy"]):
        w = [k for k in state if k.endswith("weight")][-1]
        state[w].zero_()
        state[w.replace("weight", "bias")].copy_(torch.tensor([5.0, -10.0]))
    torch.save(blob, run / "checkpoints" / "last.pt")
    assert main(["verify", str(run), "--states", "10", "--horizon", "100", "--chains-mult", "1",
                 "--steps", "5"]) == 1
    said = capsys.readouterr()
    bad = json.loads(said.out)
    assert said.err.strip().endswith("-> UNSOUND, R.3 FAILS under the model")
    assert bad["R3_true_dynamics"]["rollouts_violating"] > 0 and not bad["sound"] and not bad["R3_holds"]
    # the audit ledger continues its counts across audits
    assert ledger_totals(read_ledger(run / "verify" / "ledger.jsonl")).episodes == 20
    assert bad["R3_model"]["uniform_U_positive"] > 0   # the model sees it too
    assert bad["R3_model"]["rollout_U_positive"] > 0   # and so do its rollouts of the closed loop
    assert not bad["R3_model_holds"] and summary_line(bad).endswith("-> UNSOUND, R.3 FAILS under the model")
    worst, m = bad["R3_model"]["worst_counter_example"], bad["R3_model"]   # the worst of all it saw,
    assert worst["U"] >= m["adversary_max_U"] - 1e-6 and worst["h"] >= 0    # a certified state
    assert len(worst["members_h_next"]) == Config().dynamics.k and max(worst["members_h_next"]) < 0
    assert "(every member's next state leaves C_h" in summary_line(bad)    # the members agree: it leaves
    # and where it lies against the run's data: the coordinates outside the data's range, named
    data = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["buffer"]["s"]
    lo, hi, s = data.amin(0), data.amax(0), worst["state"]
    names = [b["coordinate"] for b in worst["beyond_data"]]
    assert names == [n for j, n in enumerate(("theta", "theta_dot")) if not lo[j] <= s[j] <= hi[j]]
    pair = load_run(run)
    w = torch.tensor([s])
    far = worst_counter_example(pair.h, pair.model, pair.policy, w, w + 1.0)
    assert [b["coordinate"] for b in far["beyond_data"]] == ["theta", "theta_dot"]
    assert far["beyond_data"][0]["data"] == pytest.approx([s[0] + 1.0] * 2)
    assert "; theta_dot " in _worst_text({"worst_counter_example": far})
    near = worst_counter_example(pair.h, pair.model, pair.policy, w, torch.cat([w - 1, w + 1]))
    assert near["beyond_data"] == [] and near["U"] == pytest.approx(far["U"])
    with pytest.raises(ValueError, match="which must be 'delivered' or 'last'"):
        verify_run(run, which="best")


def test_a_run_that_never_certifies_says_so(tmp_path, capsys):
    """Start-up's Alg. 1 stopped before it can go quiet: the initial policy acts, and the run (a
    warning), its summary and crabs verify (NO CERTIFICATE, exit status 1) all say there is no
    certificate, whatever the audit of the uncertified h finds."""
    from crabs.cli import main
    from crabs.loop import NoCertificateWarning
    from crabs.verify import summary_line, verify_run

    d = copy.deepcopy(TINY)
    d["epochs"] = 0
    d["barrier"]["pretrain_steps"] = d["barrier"]["quiet_steps"] // 2   # too few to be quiet
    d["init_noise_region"] = 0.0   # and no start-up noise: s0 lies outside a region of width 0
    torch.set_num_threads(1)
    with pytest.warns(NoCertificateWarning) as warned:
        summary = train("upright", Config.from_dict(d), tmp_path / "run", progress=False)
    said = " ".join(str(w.message) for w in warned)
    assert "start-up did not certify" in said and "no (model, h, policy) triple was certified" in said
    # the warning says that the start-up data are one path repeated, and what widens them
    assert "s0 lies outside init_noise_region" in said and "(0% of the start-up steps had noise)" in said
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["startup_noisy"]) == 0.0 and row["startup_s0_noisy"] == "False"
    assert summary["violations"] == 0 and summary["certified_epochs"] == 0 and not summary["certified"]
    assert summary["final_policy_epoch"] == 0   # the initial policy is what the run delivers
    r = verify_run(tmp_path / "run", n=2000, states=5, horizon=30, chains_mult=1, steps=5)
    assert r["has_certificate"] is False
    assert summary_line(r).endswith("-> NO CERTIFICATE (no epoch certified a triple: the initial policy "
                                    "acted throughout)")
    assert main(["verify", str(tmp_path / "run"), "--states", "5", "--horizon", "30", "--chains-mult", "1",
                 "--steps", "5"]) == 1
    said = capsys.readouterr()
    assert json.loads(said.out)["has_certificate"] is False
    assert said.err.strip().endswith("-> NO CERTIFICATE (no epoch certified a triple: the initial policy "
                                     "acted throughout)")


def test_refuses_to_overwrite_a_run(tiny_run):
    out, _ = tiny_run
    with pytest.raises(ValueError, match="already holds a run"):
        train("upright", Config.from_dict(TINY), out, progress=False)


def test_checkpoint_from_another_task_is_refused(tiny_run, tmp_path):
    out, _ = tiny_run
    from crabs.system import builtin_system

    blob = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    c = CRABS(builtin_system("tilt"), Config.from_dict({**TINY, "task": "tilt"}), tmp_path)
    with pytest.raises(ValueError, match="from task 'upright', not 'tilt'"):
        c.load_state_dict(blob)


def test_resume_after_interruption_continues_counters(tmp_path, monkeypatch):
    cfg = Config.from_dict({**TINY, "epochs": 2})
    calls = {"n": 0}
    real = CRABS.optimise_policy

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2: after its data collection, before its checkpoint
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(CRABS, "optimise_policy", flaky)
    with pytest.raises(KeyboardInterrupt):
        train("upright", cfg, tmp_path, progress=False)
    before = [r for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] == "episode"]
    monkeypatch.setattr(CRABS, "optimise_policy", real)
    summary = train(None, None, tmp_path, resume=True, progress=False)  # task from the run's config
    eps = [r for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] == "episode"]
    assert len(eps) > len(before)
    # the steps of the interrupted epoch were not forgotten: counters continue past them
    assert [r["episode"] for r in eps] == list(range(1, len(eps) + 1))
    assert summary["env_steps"] == sum(r["length"] for r in eps)
    assert summary["episodes"] == len(eps) and summary["epochs"] == 2
    assert summary["violations"] == 0
    hist = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["c_h_history"]
    assert [r["epoch"] for r in hist] == [0, 1, 2]   # Figure 3's history survives the resume


def _copy_of(tiny_run, tmp_path):
    """A copy of the tiny run's folder, to resume without touching the shared run."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    return out


def _resumed(out):
    """A CRABS runner on the run folder ``out``, resumed from its checkpoint."""
    from crabs.runs import RunDir
    from crabs.system import builtin_system

    folder = RunDir(out)
    cfg = CRABS.read_config(folder)
    r = CRABS(builtin_system("upright", cfg.sac.hidden, cfg.sac.act), cfg, folder, progress=False)
    assert r.resume()
    return r


def test_the_audit_memory_survives_a_resume(tiny_run, tmp_path):
    """barrier.audit_memory: the counter-examples found before an interruption are checkpointed and
    re-checked after it (a found counter-example blocks across a resume too)."""
    out = _copy_of(tiny_run, tmp_path)
    r = _resumed(out)
    found = torch.tensor([[0.5, -1.0], [-0.25, 2.0]])
    r.certifier.remember(found)
    r.save()
    assert torch.equal(_resumed(out).certifier.memory[-2:], found)


def test_a_resume_after_real_steps_left_C_h_refutes_the_checkpoints_triple(tiny_run, tmp_path):
    """An epoch that died after a real step left C_h (its ledger holds the note, its checkpoint never
    came): on resume the checkpoint's triple does not explore again before a new check; a note from
    before the checkpoint changes nothing."""
    out = _copy_of(tiny_run, tmp_path)
    blob = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    blob["certified"] = True
    torch.save(blob, out / "checkpoints" / "last.pt")
    r = _resumed(out)
    since = int(r.rows[-1]["env_steps"])
    assert r.certified and not r.refuted_on_resume

    def note(steps):
        with open(out / "ledger.jsonl", "a") as fh:
            fh.write(json.dumps({"tag": "explore", "event": "model_failure", "env_steps": steps, "U": -0.01})
                     + "\n")

    note(since)                       # written before the checkpoint: its epoch learnt from it
    assert _resumed(out).certified
    note(since + 7)                   # after it: the epoch that learnt from it is lost
    r = _resumed(out)
    assert not r.certified and r.refuted_on_resume.startswith("resume: 1 real step(s) left C_h")
    assert r.run_epoch()["refuted"].startswith("resume:")


def test_crash_during_startup_resumes_with_its_steps_counted(tmp_path, monkeypatch):
    """No checkpoint exists yet: resume starts up again and the dead start-up's steps still count."""
    cfg = Config.from_dict({**TINY, "epochs": 1})
    real = CRABS.init_certificate

    def dies(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(CRABS, "init_certificate", dies)
    with pytest.raises(KeyboardInterrupt):
        train("upright", cfg, tmp_path, progress=False)
    first = [r for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] == "episode"]
    assert len(first) == TINY["init_episodes"]
    monkeypatch.setattr(CRABS, "init_certificate", real)
    summary = train(None, None, tmp_path, resume=True, progress=False)
    eps = [r for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] == "episode"]
    assert [r["episode"] for r in eps] == list(range(1, len(eps) + 1))
    assert summary["env_steps"] == sum(r["length"] for r in eps) > sum(r["length"] for r in first)


def test_resume_of_a_finished_run_takes_no_real_step(tiny_run, capsys):
    """Resuming a run that had finished returns its summary and says so; no evaluation episode
    is added."""
    out, summary = tiny_run
    before = (out / "ledger.jsonl").read_text()
    again = train(None, None, out, resume=True, progress=True)
    assert again == summary
    assert (out / "ledger.jsonl").read_text() == before
    assert "finished its 2 epochs: nothing to do" in capsys.readouterr().out


def test_cli_refuses_options_a_resumed_run_would_ignore(tiny_run, capsys, monkeypatch):
    """A resumed run keeps its config.yaml: --seed, --config, --out (and a baseline's --steps) are
    refused with a one-line error, not silently dropped; make-initial takes its own options."""
    from crabs.cli import main

    out, _ = tiny_run
    before = (out / "ledger.jsonl").read_text()
    assert main(["train", "--resume", str(out), "--seed", "3"]) == 2
    assert "--seed cannot be used with --resume" in capsys.readouterr().err
    assert main(["baseline", "sac", "--resume", str(out), "--steps", "10", "--out", "x"]) == 2
    assert "--out, --steps cannot be used with --resume" in capsys.readouterr().err
    assert (out / "ledger.jsonl").read_text() == before
    seen = []
    monkeypatch.setattr("crabs.initial.main", lambda argv: seen.append(argv) or 0)
    assert main(["make-initial", "--task", "upright", "--task", "tilt", "--out", "d"]) == 0
    assert seen == [["--task", "upright", "--task", "tilt", "--out", "d"]]


def test_rollout_refuses_a_runs_folder(tiny_run, tmp_path, capsys):
    """crabs rollout writes a ledger and summary of its own: into a run's folder it would restart
    the counts and overwrite the run's summary, so it refuses, before any real step."""
    from crabs.cli import main

    out, summary = tiny_run
    ledger = (out / "ledger.jsonl").read_text()
    assert main(["rollout", "--task", "upright", "--episodes", "1", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "ledger.jsonl").read_text() == ledger
    assert json.loads((out / "summary.json").read_text()) == summary
    assert main(["rollout", "--task", "upright", "--episodes", "1", "--out", str(tmp_path / "r")]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 1


def test_resume_refuses_another_task(tiny_run):
    out, _ = tiny_run
    with pytest.raises(ValueError, match="holds a run of task 'upright', not 'tilt'"):
        train("tilt", None, out, resume=True, progress=False)


def test_fallback_policy_follows_the_last_certified_policy(tmp_path):
    from crabs.rollout import mean_actor
    from crabs.system import builtin_system

    cfg = Config.from_dict({**TINY, "explore": {"fallback": "policy"}})   # the last certified policy alone
    c = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    s = np.array([0.3, -0.9])
    a0 = c.safe_actor()(s).action
    new = {k: v + 0.5 for k, v in c.policy.state_dict().items()}
    c.safety.set_safe_policy(new, 2)
    d1 = c.safe_actor()(s)
    assert c.safety.safe_policy_epoch == 2 and c.safety.acting_epoch(c.epoch) == 2   # not certified
    assert d1.safeguard and d1.U is not None      # the fallback's actions are checked against h
    assert not torch.allclose(torch.as_tensor(a0), torch.as_tensor(d1.action))
    c.policy.load_state_dict(new)
    torch.testing.assert_close(torch.as_tensor(d1.action), torch.as_tensor(mean_actor(c.policy)(s)))


def test_a_pair_the_delivery_audit_refutes_is_never_kept_as_best(tmp_path, monkeypatch):
    """barrier.delivery_audit: a certified pair with a higher return is kept as the run's best only if
    the delivery audit finds nothing, under the pair's own model; what it found goes to metrics.csv,
    and a refuted pair is no longer certified."""
    from crabs.system import builtin_system

    c = CRABS(builtin_system("upright"), Config.from_dict(TINY), tmp_path, progress=False)
    c.safety.certified = True
    calls = []

    def audit(h, model, policy, n, horizon, gen):
        calls.append((n, horizon, model is c.model, gen is c.delivery_gen))
        return torch.zeros(3 if len(calls) == 1 else 0, 2)      # the first audit refutes its pair

    monkeypatch.setattr(c.certifier, "delivery_audit", audit)
    assert c.keep_if_best(1, -5.0) == {"delivery_counter_examples": 3, "refuted": "delivery_audit"}
    assert c.safety.best is None and not c.certified     # refuted: nothing explores with it
    c.safety.certified = True                            # a later check certifies again
    assert c.keep_if_best(2, -6.0) == {"delivery_counter_examples": 0} and c.safety.best["epoch"] == 2
    assert c.keep_if_best(3, -7.0) == {} and len(calls) == 2       # not better: no audit
    assert calls[0] == (5000, c.sys.spec.horizon, True, True)


def test_best_pair_is_kept_only_from_certified_evaluations_and_delivered(tmp_path):
    """final_policy: the highest-return evaluation whose policy was certified is kept with its h,
    survives a checkpoint, and is what the run delivers with "best" (with "last", nothing moves)."""
    from crabs.system import builtin_system

    cfg = Config.from_dict(TINY).replace(barrier={"delivery_audit": 0})   # (its own test above)
    c = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    c.safety.certified = True
    c.keep_if_best(1, -5.0)
    pi1 = copy.deepcopy(c.policy.state_dict())
    h1 = copy.deepcopy(c.h.state_dict())
    with torch.no_grad():
        for p in list(c.policy.parameters()) + list(c.h.parameters()):
            p.add_(0.1)
    c.keep_if_best(2, -6.0)           # lower return: not kept
    c.safety.certified = False
    c.keep_if_best(3, -1.0)           # higher, but the evaluated policy was not certified: not kept
    c.keep_if_best(4, float("nan"))
    assert c.safety.best["epoch"] == 1 and c.safety.best["return"] == -5.0
    c.epoch = 5
    blob = c.state_dict()
    c2 = CRABS(builtin_system("upright"), Config.from_dict(TINY), tmp_path / "b", progress=False)
    c2.load_state_dict(blob)
    assert c2.safety.best["epoch"] == 1
    # a checkpoint of version 2: no algorithm, the rows under "log", no safe_policy_epoch
    old = {k: v for k, v in blob.items() if k not in ("safe_policy_epoch", "algorithm", "rows")}
    old["version"] = 2
    old["log"] = [{"epoch": 1, "policy_certified": True}, {"epoch": 2, "policy_certified": False}]
    c3 = CRABS(builtin_system("upright"), Config.from_dict(TINY), tmp_path / "e", progress=False)
    c3.load_state_dict(old)
    assert c3.safety.safe_policy_epoch == 1
    last = CRABS(builtin_system("upright"), Config.from_dict({**TINY, "final_policy": "last"}),
                 tmp_path / "c", progress=False)
    last.load_state_dict(blob)
    before = copy.deepcopy(last.policy.state_dict())
    # the last epoch's policy was not certified: the last certified one acts and is delivered
    assert last.adopt_final_policy() == 0 and not last.certified   # here the initial policy
    torch.testing.assert_close(last.policy.state_dict(), before)
    last.safety.set_safe_policy(pi1, 3)
    assert last.adopt_final_policy() == 3
    last.safety.certified = True
    assert last.adopt_final_policy() == 5
    assert CRABS(builtin_system("upright"), Config.from_dict(TINY), tmp_path / "d",
                 progress=False).safety.acting_epoch(0) == 0
    assert c2.adopt_final_policy() == 1 and c2.certified
    torch.testing.assert_close(c2.policy.state_dict(), pi1)
    torch.testing.assert_close(c2.h.state_dict(), h1)
    with pytest.raises(ValueError, match="final_policy: must be 'best' or 'last'"):
        Config.from_dict({**TINY, "final_policy": "max"})


def test_regulariser_states_of_the_previous_certified_set(tmp_path):
    """reg_states = "certified": Reg (Sec. 4.2) is taken over uniform states of the previous C_h."""
    from crabs.system import builtin_system

    cfg = Config.from_dict({**TINY, "barrier": {**TINY["barrier"], "reg_states": "certified",
                                                 "reg_samples": 64}})
    c = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    assert c.reference_states(None) is None
    h_prev = c.cert.snapshot()
    pool = c.reference_states(h_prev)
    assert len(pool) > 100 and bool((h_prev(pool) >= 0).all())
    low, high = torch.as_tensor(c.sys.state_low), torch.as_tensor(c.sys.state_high)
    assert bool(((pool >= low.float()) & (pool <= high.float())).all())
    seen = []
    step = c.cert.step

    def recording_step(model, policy, w, hp, s_reg):
        seen.append(s_reg)
        return step(model, policy, w, hp, s_reg)

    c.cert.step = recording_step
    c.train_certificate(30, h_prev)
    assert seen, "the adversary found no violating state in an untrained certificate"
    for s in seen:
        assert s.shape == (64, 2) and bool((h_prev(s) >= 0).all())


def test_regulariser_states_visited_are_replay_states_in_the_previous_certified_set(tmp_path):
    """reg_states = "visited": Reg (Sec. 4.2) is taken over the replay buffer's states (s and s')
    that lie in the previous C_h, so it holds h up only where there is data."""
    from crabs.system import builtin_system

    cfg = Config.from_dict({**TINY, "barrier": {**TINY["barrier"], "reg_states": "visited"}})
    c = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    h_prev = c.cert.snapshot()
    assert c.reference_states(h_prev) is None  # no data yet
    g = torch.Generator().manual_seed(0)
    low, high = torch.as_tensor(c.sys.state_low).float(), torch.as_tensor(c.sys.state_high).float()
    s = low + (high - low) * torch.rand(300, 2, generator=g)  # spread over the box: some in C_h
    s2 = s + 0.01
    c.buffer.add_many(s.numpy(), torch.zeros(300, 1).numpy(), torch.zeros(300).numpy(), s2.numpy(),
                      torch.zeros(300).numpy())
    data = torch.cat([s, s2])
    pool = c.reference_states(h_prev)
    inside = h_prev(data) >= 0
    assert 0 < int(inside.sum()) < len(data)
    assert len(pool) == int(inside.sum()) and bool((h_prev(pool) >= 0).all())
    assert bool((pool[:, None, :] == data[inside][None]).all(-1).any(1).all())  # exactly those states


def test_reg_states_is_checked():
    from crabs.config import PAPER

    assert Config().barrier.reg_states == "visited"     # the paper's approximation is "candidates"
    assert PAPER["barrier.reg_states"] == "candidates"
    with pytest.raises(ValueError, match="reg_states: must be 'candidates', 'certified' or 'visited'"):
        Config.from_dict({"barrier": {"reg_states": "everywhere"}})


class _ShiftModel(torch.nn.Module):
    """A toy T-hat: every member moves the state by ``shift`` whatever the action."""

    def __init__(self, shift):
        super().__init__()
        self.shift = torch.as_tensor(shift, dtype=torch.float32)

    def means(self, s, a):
        return (s + self.shift)[None].expand(3, *s.shape)


def test_uniform_violations_audits_the_certificate(tmp_path):
    """The fraction of uniform states of C_h with U > 0: 0 when the model keeps every state where
    it is (C_h is then trivially invariant), most of C_h when it throws states past the limit."""
    from crabs.system import builtin_system

    c = CRABS(builtin_system("upright"), Config.from_dict(TINY), tmp_path, progress=False)
    assert c.certified_volume() > 0.01
    c.model = _ShiftModel([0.0, 0.0])
    assert c.epoch_audit({}) == 0.0
    c.model = _ShiftModel([3.0, 0.0])                  # theta + 3: outside |theta| <= 1.5
    assert c.epoch_audit({}) == 1.0
    c.model = _ShiftModel([1.2, 0.0])
    assert 0.0 < c.epoch_audit({}) < 1.0


def test_evidence_after_the_check_refutes_the_triple(tmp_path):
    """A counter-example the epoch's audit finds, or an evaluation that left C_h, while a triple is
    certified: it is no longer certified (nothing explores; its policy, kept, acts only through the
    guard), the finds are remembered for every later audit, and metrics.csv says why. Without a
    certified triple nothing changes; the paper's settings (no audit, no exit response) refute
    nothing."""
    from crabs.barrier import U
    from crabs.certify import uniform_violations
    from crabs.system import builtin_system

    c = CRABS(builtin_system("upright"), Config.from_dict(TINY).replace(barrier={"delivery_audit": 4000}),
              tmp_path, progress=False)
    before = {k: v.clone() for k, v in c.safety.safe_policy.items()}
    new_policy = {k: v + 1.0 for k, v in before.items()}

    def certify(epoch):
        c.safety.after_check(True, new_policy, epoch)
        assert c.certified and c.safety.acting_epoch(epoch) == epoch

    c.model = _ShiftModel([1.2, 0.0])                  # throws part of C_h past the limit
    row, kept = {}, len(c.certifier.memory)
    assert 0.0 < c.epoch_audit(row) < 1.0 and "refuted" not in row   # uncertified: a measurement
    assert len(c.certifier.memory) == kept
    certify(3)
    frac = c.epoch_audit(row)
    assert 0.0 < frac < 1.0 and row["refuted"] == "epoch audit" and not c.certified
    found = c.certifier.memory[kept:]                  # the finds: states of C_h with U > 0, kept
    assert len(found) > 1000 and bool((c.h(found) >= 0).all())
    assert bool((U(c.h, c.model, found, c.policy.mean_action(found)) > 0).all())
    assert c.safety.safe_policy_epoch == 3                # its policy is kept, guarded
    assert all(torch.equal(c.safety.safe_policy[k], new_policy[k]) for k in before)
    assert not c.safety.refute()                       # refuted once: nothing left to refute

    c.model = _ShiftModel([0.0, 0.0])                  # C_h invariant: the audit finds nothing
    certify(4)
    row = {}
    assert c.epoch_audit(row) == 0.0 and "refuted" not in row and c.certified
    c.refute_on_exit({"eval_model_failures": 0, "eval_exits_C_h": 0})
    assert c.certified
    row = {"eval_model_failures": 1, "eval_exits_C_h": 0}
    c.refute_on_exit(row)
    assert row["refuted"] == "evaluation left C_h" and not c.certified

    certify(5)                                         # the delivery audit's finds refute too
    c.model = _ShiftModel([1.2, 0.0])
    row = c.keep_if_best(5, 1.0)
    assert row["delivery_counter_examples"] > 0 and row["refuted"] == "delivery_audit"
    assert not c.certified and c.safety.best is None

    # a NaN anywhere counts against the certificate: never a vacuous pass
    c.model = _ShiftModel([float("nan"), 0.0])
    certify(6)
    row = {}
    assert c.epoch_audit(row) == 1.0 and row["refuted"] == "epoch audit"
    assert uniform_violations(c.h, c.model, c.policy, c.certified_samples(c.h, 100)) == 1.0

    paper = CRABS(builtin_system("upright"), Config.from_dict(TINY).replace(
        barrier={"audit": False}, explore={"stop_on_exit": False}), tmp_path / "paper", progress=False)
    paper.model = _ShiftModel([1.2, 0.0])
    paper.safety.after_check(True, new_policy, 1)
    row = {"eval_model_failures": 1, "eval_exits_C_h": 1}
    paper.refute_on_exit(row)
    assert 0.0 < paper.epoch_audit(row) < 1.0 and "refuted" not in row and paper.certified


def test_exploration_ends_at_a_model_failure(tmp_path, monkeypatch):
    """explore.stop_on_exit: an exploration episode whose real next state left C_h, a model failure
    (U <= 0) as much as an exit (U > 0), ends the epoch's exploration: no further real step with that
    triple before the model has learnt the transition and the triple is re-checked."""
    from crabs.rollout import Episode
    from crabs.system import builtin_system

    c = CRABS(builtin_system("upright"), Config.from_dict({**TINY, "explore": {"episodes_per_epoch": 3}}),
              tmp_path, progress=False)
    c.safety.after_check(True, c.policy.state_dict(), 1)
    outcomes, calls = iter([(1, 0), (0, 0), (0, 0)]), []

    def fake_episode(env, actor, label="", guarded=False):
        calls.append(guarded)
        fails, exits = next(outcomes)
        c.buffer.add(np.zeros(2), np.zeros(1), 0.0, np.zeros(2), 0.0)   # the episode's one step
        return Episode(states=[np.zeros(2)], ret=0.0, length=1, violated=False, safeguards=0), fails, exits

    monkeypatch.setattr(c, "episode", fake_episode)
    row = c.collect()
    assert calls == [True] and row["model_failures"] == 1 and row["explore_episodes"] == 1


def test_train_margin_updates_on_near_violators_too(tmp_path):
    """barrier.train_margin m: Alg. 1 is triggered by a state with U + eps > 0 but then updates on
    every chain with U + eps + m > 0, pushing C* below -eps with room to spare."""
    from crabs.barrier import U_pi
    from crabs.system import builtin_system

    eps, m = 0.01, 0.5
    cfg = Config.from_dict({**TINY, "barrier": {**TINY["barrier"], "train_margin": m, "max_batch": 10000}})
    c = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    us = []
    step = c.cert.step

    def recording_step(model, policy, w, hp, s_reg):
        with torch.no_grad():
            us.append(U_pi(c.h, model, policy, w))
        return step(model, policy, w, hp, s_reg)

    c.cert.step = recording_step
    c.train_certificate(30, None)
    assert us, "the adversary found no violating state in an untrained certificate"
    u = torch.cat(us)
    assert bool((u + eps + m > -1e-4).all())
    assert bool((u + eps <= 0).any())                 # the margin widened the batch


def _failing_alg1(c):
    """A stand-in for Alg. 1 that makes one real update of h (and of Adam's moments), then gives up."""
    def failing(steps, h_prev):
        c.adv.step(c.h, c.model, c.policy)
        c.cert.step(c.model, c.policy, c.adv.candidates()[:8], h_prev, c.adv.candidates())
        return False, steps
    return failing


def test_dilation_adapts_and_a_failed_epoch_rolls_h_back(tmp_path):
    """regrow_mode "dilate": the epoch dilates C_h before Alg. 1; if Alg. 1 is not quiet within its
    budget h is rolled back to the previous epoch's and the next dilation is halved; after a quiet
    Alg. 1 it is raised by 1.25x."""
    from crabs.system import builtin_system

    cfg = Config.from_dict({**TINY, "barrier": {**TINY["barrier"], "regrow_mode": "dilate",
                                                 "on_stuck": "rollback", "dilation": 0.2,
                                                 "regrow_policy_steps": 5}})
    c = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    c.startup()
    before = {k: v.clone() for k, v in c.h.state_dict().items()}
    adam = copy.deepcopy(c.cert.opt.state_dict())
    assert adam["state"], "start-up's Alg. 1 made no update"

    c.train_certificate = _failing_alg1(c)
    row = c.run_epoch()
    assert row["dilation"] == 0.2 and not row["cert_found"]
    assert c.safety.dilation == pytest.approx(0.1)
    for k, v in c.h.state_dict().items():            # rolled back: the dilation is undone (the
        if k != "pad":                               # edge pad may have grown with the new data)
            torch.testing.assert_close(v, before[k])
    for st, st0 in zip(c.cert.opt.state_dict()["state"].values(), adam["state"].values()):
        torch.testing.assert_close(st["exp_avg"], st0["exp_avg"])  # and so is the optimiser's state
    c.train_certificate = lambda steps, h_prev: (True, 1)
    c.run_epoch()
    assert c.safety.dilation == pytest.approx(0.125)
    assert c.state_dict()["dilation"] == pytest.approx(0.125)  # checkpointed


def test_on_stuck_carry_keeps_carving_an_uncertified_certificate(tmp_path):
    """barrier.on_stuck "carry": once the triple is uncertified, an epoch whose Alg. 1 is not quiet
    keeps the carved h (no rollback), does not regrow it and carves it for the last certified
    policy; "rollback" (the facts sheet's rule) restores h; while the triple is certified both roll
    back."""
    from crabs.system import builtin_system

    for mode in ("rollback", "carry"):
        cfg = Config.from_dict({**TINY, "barrier": {**TINY["barrier"], "on_stuck": mode,
                                                     "regrow_mode": "dilate", "regrow_policy_steps": 5}})
        c = CRABS(builtin_system("upright"), cfg, tmp_path / mode, progress=False)
        c.startup()
        c.train_certificate = _failing_alg1(c)
        c.ensure_policy_certified = lambda steps: (True, 0)  # the epoch's check passes
        c.safety.certified = True                    # a certified triple: both modes roll back
        before = {k: v.clone() for k, v in c.h.state_dict().items()}
        row = c.run_epoch()
        assert not row["cert_found"] and "dilation" in row
        for k, v in c.h.state_dict().items():   # the edge pad may have grown with the epoch's data
            if k != "pad":
                torch.testing.assert_close(v, before[k])
        c.safety.certified = False                   # now uncertified
        with torch.no_grad():                        # the training policy has drifted since
            for q in c.policy.parameters():
                q.add_(0.1)
        seen, safe = [], copy.deepcopy(c.safety.safe_policy)
        failing = c.train_certificate

        def recording(steps, h_prev, c=c, seen=seen, failing=failing):
            seen.append({k: v.clone() for k, v in c.policy.state_dict().items()})
            return failing(steps, h_prev)

        c.train_certificate = recording
        row = c.run_epoch()
        from_safe = all(torch.equal(v, safe[k]) for k, v in seen[0].items())
        assert from_safe == (mode == "carry")  # carry carves h for the policy that acts meanwhile
        changed = any(not torch.equal(v, before[k]) for k, v in c.h.state_dict().items() if k != "pad")
        assert changed == (mode == "carry")
        assert ("dilation" in row) == (mode == "rollback")  # carry does not regrow
    with pytest.raises(ValueError, match="on_stuck: must be 'rollback' or 'carry'"):
        Config.from_dict({"barrier": {"on_stuck": "retry"}})


def test_regrow_accept_if_larger_undoes_a_regrowth_that_shrinks_C_h(tmp_path):
    """barrier.regrow_accept "if_larger": when C_h after the regrowth and Alg. 1 is smaller than the
    previous C_h, Alg. 1 runs again from the previous h and the previous policy, and its result is
    kept if larger; a regrowth that leaves C_h larger is kept without a second Alg. 1."""
    from crabs.system import builtin_system

    for shrink in (True, False):
        cfg = Config.from_dict({**TINY, "barrier": {**TINY["barrier"], "regrow_mode": "dilate",
                                                     "on_stuck": "rollback", "dilation": 0.2,
                                                     "regrow_accept": "if_larger"}})
        c = CRABS(builtin_system("upright"), cfg, tmp_path / str(shrink), progress=False)
        c.startup()
        h0 = {k: v.clone() for k, v in c.h.state_dict().items()}
        pi0 = copy.deepcopy(c.policy.state_dict())
        seen = []

        def regrowth_policy_steps(steps, c=c, seen=seen):
            if not seen:  # the regrowth's policy steps move the policy
                with torch.no_grad():
                    for q in c.policy.parameters():
                        q.add_(0.1)
            return True, 0

        def alg1(steps, h_prev, c=c, seen=seen, shrink=shrink):
            seen.append(({k: v.clone() for k, v in c.h.state_dict().items()},
                         copy.deepcopy(c.policy.state_dict())))
            if shrink and len(seen) == 1:  # Alg. 1 carves away more than the regrowth added
                with torch.no_grad():
                    c.h.f[-1].weight.mul_(3.0)
            return True, 10

        c.ensure_policy_certified = regrowth_policy_steps
        c.train_certificate = alg1
        row = c.run_epoch()
        assert row["cert_found"]
        if shrink:
            assert row["regrowth_undone"] and row["regrow_volume"] < row["prev_volume"]
            assert len(seen) == 2
            h_again, pi_again = seen[1]  # the second Alg. 1 starts from h-hat and pi_start
            assert all(torch.equal(v, h0[k]) for k, v in h_again.items())
            assert all(torch.equal(v, pi0[k]) for k, v in pi_again.items())
            assert all(torch.equal(v, h0[k]) for k, v in c.h.state_dict().items())
        else:
            assert "regrowth_undone" not in row and row["regrow_volume"] >= row["prev_volume"]
            assert len(seen) == 1
            assert any(not torch.equal(v, h0[k]) for k, v in c.h.state_dict().items())
    with pytest.raises(ValueError, match="regrow_accept: must be 'always' or 'if_larger'"):
        Config.from_dict({"barrier": {"regrow_accept": "bigger"}})


def test_model_failures_are_counted_and_written_to_the_ledger(tmp_path):
    """A step whose action the model put inside C_h (U <= 0) but whose real next state lies outside
    (h < 0) is a model failure: counted in the episode and written to the ledger with U, h and the
    transition; steps without a model check (U None) or with U > 0 are not failures."""
    from crabs.rollout import Decision, mean_actor
    from crabs.system import builtin_system

    crabs = CRABS(builtin_system("upright"), Config.from_dict(TINY), tmp_path, progress=False)
    crabs.h = lambda x: -torch.ones(x.shape[:-1])  # every real state is outside C_h
    us = iter([-0.5, None, 0.3] * 1000)
    act = mean_actor(crabs.policy)
    env = crabs.env("explore")
    ep, failures, exits = crabs.episode(env, lambda s: Decision(act(s), False, next(us)), label="uniform")
    env.close()
    expected = len(range(0, ep.length, 3))
    assert failures == expected > 0
    assert exits == len(range(2, ep.length, 3))      # U > 0 and outside: an exit, not a failure
    notes = [r for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] == "model_failure"]
    assert len(notes) == expected
    assert notes[0]["U"] == -0.5 and notes[0]["h_next"] == -1.0 and notes[0]["tag"] == "explore"
    assert notes[0]["kind"] == "uniform"
    assert notes[0]["safeguard"] is False and len(notes[0]["next_state"]) == len(notes[0]["state"])
    assert crabs.counters.violations == 0  # a note never touches the counters


def test_min_std_from_epoch_delays_the_exploration_floor(tmp_path, monkeypatch):
    """``explore.min_std`` reaches Alg. 3 only from epoch ``explore.min_std_from_epoch`` on (1-based,
    as metrics.csv counts epochs); before it the paper's proposals (no floor) are used."""
    import crabs.explore as explore
    from crabs.explore import ExploreResult
    from crabs.rollout import mean_actor
    from crabs.system import builtin_system

    cfg = Config.from_dict({**TINY, "explore": {"min_std": 0.3, "min_std_from_epoch": 3}})
    crabs = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    crabs.safety.certified = True
    seen = []

    def spy(s, policy, h, model, n, noise_decay, **kw):
        seen.append(kw["min_std"])
        return ExploreResult(mean_actor(crabs.policy)(s), True, 0.0)

    monkeypatch.setattr(explore, "safeguarded_action", spy)
    floors = {}
    for epoch in (0, 1, 2, 3):                # epochs 1-4 of the run
        seen.clear()
        crabs.epoch = epoch
        crabs.collect()
        floors[epoch + 1] = set(seen)
    assert floors == {1: {0.0}, 2: {0.0}, 3: {0.3}, 4: {0.3}}
    assert crabs.counters.violations == 0
    with pytest.raises(ValueError, match="explore.min_std_from_epoch: must be >= 1"):
        Config.from_dict({"explore": {"min_std_from_epoch": 0}})


def test_edge_pad_follows_the_models_largest_miss_on_fresh_transitions(tmp_path):
    """barrier.edge_factor f: the pad is f x the largest distance by which a real next state lay
    beyond the K means' range (constrained coordinates, in units of the limit), never shrinks,
    is capped, and 0 turns it off (the paper's B_safe); it is saved with h."""
    from crabs.loop import EDGE_PAD_MAX
    from crabs.system import builtin_system

    c = CRABS(builtin_system("upright"), Config.from_dict(TINY), tmp_path / "a", progress=False)
    zmax = float(c.sys.spec.constrained_max[0])
    s = torch.zeros(50, 2)
    s[:, 1] = torch.linspace(-1, 1, 50)
    fresh = {"s": s, "a": torch.zeros(50, 1), "s2": s.clone()}
    fresh["s2"][7, 0] += 0.02                                    # one miss of 0.02 rad in theta
    fresh["s2"][9, 1] += 5.0                                     # misses in theta_dot do not count
    c.model = _ShiftModel([0.0, 0.0])
    info = c.widen_edge(fresh)
    assert info["edge_miss"] == pytest.approx(0.02 / zmax, rel=1e-5)
    assert float(c.h.pad[0]) == pytest.approx(2.0 * 0.02 / zmax, rel=1e-5)
    c.model = _ShiftModel([0.01, 0.0])                           # a smaller miss: the pad stays
    c.widen_edge(fresh)
    assert float(c.h.pad[0]) == pytest.approx(2.0 * 0.02 / zmax, rel=1e-5)
    fresh["s2"][7, 0] += 10.0                                    # a model that has learnt nothing
    c.model = _ShiftModel([0.0, 0.0])
    c.widen_edge(fresh)
    assert float(c.h.pad[0]) == pytest.approx(EDGE_PAD_MAX)
    assert c.extra_state()["barrier"]["h"]["pad"][0] == pytest.approx(EDGE_PAD_MAX)
    off = CRABS(builtin_system("upright"), Config.from_dict({**TINY, "barrier": {**TINY["barrier"],
                                                                              "edge_factor": 0.0}}),
                tmp_path / "b", progress=False)
    off.model = _ShiftModel([0.0, 0.0])
    assert off.widen_edge(fresh) == {} and float(off.h.pad[0]) == 0.0
