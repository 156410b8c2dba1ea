"""The SAC-with-penalty baseline (Sec. 6 (a), App. C.3) and ``crabs compare``: plain SAC learns,
a violation is penalised, stored as terminal and counted by the monitor, and an interrupted run
resumes with the same counters."""

import json

import numpy as np
import pytest
import torch

from crabs.baselines import SACPenaltyConfig, load_sac_config, train_sac_penalty
from crabs.baselines.sac_penalty import SACPenalty
from crabs.cli import main
from crabs.config import SACConfig
from crabs.envs import ledger_totals, read_ledger
from crabs.nets import TanhGaussianPolicy
from crabs.sac import ConstrainedSAC
from crabs.system import builtin_system

QUICK = {"eval_every": 200, "warmup": 100, "sac": {"batch": 32, "critic_hidden": [32, 32]}}


def test_plain_sac_learns_a_one_step_bandit():
    """h = None: no mask, Q-hat = Q1. On a one-step problem with reward -(a - 0.5)^2 the mean
    action moves to about 0.5."""
    torch.manual_seed(0)
    pi = TanhGaussianPolicy(1, 1, (16,))
    sac = ConstrainedSAC(pi, SACConfig(critic_hidden=(32, 32), lr=3e-3, init_alpha=0.01, learn_alpha=False))
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        s = torch.zeros(64, 1)
        a = torch.rand(64, 1, generator=gen) * 2 - 1
        batch = {"s": s, "a": a, "r": -(a[:, 0] - 0.5) ** 2, "s2": s, "done": torch.ones(64)}
        info = sac.update(batch, None, None)
    assert info["mask_frac"] == 1.0 and np.isnan(info["certified_frac"])
    assert abs(float(pi.mean_action(torch.zeros(1, 1))) - 0.5) < 0.1


def test_violation_is_penalised_terminal_and_counted(tmp_path):
    """A policy that pushes the pendulum over: the step into the unsafe set is stored with reward
    -penalty and done = 1, the monitor counts it and ends the episode there."""
    cfg = SACPenaltyConfig.from_dict({"task": "upright", "total_steps": 300, "warmup": 10**6,
                                      "from_initial": False, "penalty": 100.0})
    learner = SACPenalty(builtin_system("upright"), cfg, tmp_path, progress=False)
    with torch.no_grad():  # mean action +1, tiny noise: the pendulum falls
        last = learner.policy.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, -10.0]))
    env = learner._env("explore")
    try:
        ep = learner.episode(env)
    finally:
        env.close()
    assert ep["violated"] and learner.counters.violations == 1
    n = len(learner.buffer)
    assert n == ep["length"] < 200
    assert learner.buffer.done[n - 1] == 1 and learner.buffer.done[: n - 1].sum() == 0
    assert learner.buffer.r[n - 1] == -100.0   # the env's own reward there is -30 (its default)
    assert learner.buffer.r[:n].sum() == pytest.approx(ep["return"] - 70.0, rel=1e-4)
    led = read_ledger(tmp_path / "ledger.jsonl")
    assert sum(r["event"] == "violation" for r in led) == 1


def test_run_folder_and_resume_continue_the_counters(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = SACPenaltyConfig.from_dict({"task": "upright", "total_steps": 800, **QUICK})
    calls = {"n": 0}
    real = SACPenalty.evaluate

    def dies_second_time(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(SACPenalty, "evaluate", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        train_sac_penalty("upright", cfg, tmp_path, progress=False)
    before = ledger_totals(read_ledger(tmp_path / "ledger.jsonl"))
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert before.env_steps > ck["counters"]["env_steps"]  # steps after the checkpoint ...
    monkeypatch.setattr(SACPenalty, "evaluate", real)
    with pytest.raises(ValueError, match="holds a run of task 'upright', not 'tilt'"):
        train_sac_penalty("tilt", None, tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train_sac_penalty("upright", cfg, tmp_path, progress=False)
    summary = train_sac_penalty(None, None, tmp_path, resume=True, progress=False)
    after = ledger_totals(read_ledger(tmp_path / "ledger.jsonl"))
    # ... still count: the summary's counters are the ledger's, every step since the start
    assert summary["env_steps"] == after.env_steps >= 800 and after.env_steps > before.env_steps
    assert summary["violations"] == after.violations and summary["episodes"] == after.episodes
    eps = [r for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] == "episode"]
    assert sum(r["length"] for r in eps) == summary["env_steps"]
    assert {r["tag"] for r in eps} == {"explore", "eval"}
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("eval,eval_return") and len(rows) - 1 == summary["evaluations"] >= 3
    for f in ("config.yaml", "figure2.png", "checkpoints/policy.pt", "summary.json"):
        assert (tmp_path / f).exists(), f
    # a finished run resumes to its summary without a step
    assert train_sac_penalty(None, None, tmp_path, resume=True, progress=False) == summary
    assert ledger_totals(read_ledger(tmp_path / "ledger.jsonl")) == after


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        SACPenaltyConfig.from_dict({"penalti": 30})
    with pytest.raises(ValueError, match="penalty: must be >= 0"):
        SACPenaltyConfig.from_dict({"penalty": -1.0})
    with pytest.raises(ValueError, match="no dynamics model"):
        SACPenaltyConfig.from_dict({"sac": {"model_horizon": 3}})
    with pytest.raises(ValueError, match="not a built-in task"):
        _ = SACPenaltyConfig.from_dict({"task": "my_robot"}).steps
    assert SACPenaltyConfig().penalty == 30.0  # App. C.3
    assert SACPenaltyConfig.from_dict({"task": "move"}).steps == 90000
    f = tmp_path / "c.yaml"
    f.write_text("task: tilt\npenalty: 10\n")
    with pytest.raises(ValueError, match="for task 'tilt', not 'upright'"):
        load_sac_config(f, "upright")
    cfg = load_sac_config(f, "tilt", seed=3, total_steps=None)
    assert (cfg.penalty, cfg.seed, cfg.total_steps) == (10.0, 3, 0)
    with pytest.raises(ValueError, match="unknown task"):
        load_sac_config(None, "walk")


def test_compare_draws_figure2_and_tabulates(tmp_path, capsys):
    for seed in (0, 1):
        assert main(["baseline", "sac", "--task", "upright", "--seed", str(seed), "--steps", "250",
                     "--out", str(tmp_path / f"s{seed}"), "--quiet"]) == 0
    capsys.readouterr()
    fig = tmp_path / "cmp.png"
    assert main(["compare", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(fig)]) == 0
    out = capsys.readouterr().out
    assert fig.exists() and fig.stat().st_size > 10_000
    assert "sac s0" in out and "sac s1" in out and "upright" in out
    s0 = json.loads((tmp_path / "s0" / "summary.json").read_text())
    assert str(s0["env_steps"]) in out
    assert main(["compare", str(tmp_path), "--out", str(fig)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
