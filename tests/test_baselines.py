"""The SAC-with-penalty baseline (Sec. 6 (a), App. C.3) and ``crabs compare``: plain SAC learns,
a violation is penalised, stored as terminal and counted by the monitor, and an interrupted run
resumes with the same counters."""

import json
import math

import numpy as np
import pytest
import torch

from crabs.baselines import (
    SQRL,
    BaselineConfig,
    RecoveryRL,
    SACPenalty,
    load_baseline_config,
    train_recovery_rl,
    train_sac_penalty,
    train_sqrl,
)
from crabs.baselines.safety_critic import SafetyCritic
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
    cfg = BaselineConfig.from_dict({"task": "upright", "total_steps": 300, "warmup": 10**6,
                                    "from_initial": False, "penalty": 100.0})
    learner = SACPenalty(builtin_system("upright"), cfg, tmp_path, progress=False)
    with torch.no_grad():  # mean action +1, tiny noise: the pendulum falls
        last = learner.policy.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, -10.0]))
    env = learner.env("explore")
    try:
        ep = learner.episode(env, budget=300)
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
    cfg = BaselineConfig.from_dict({"task": "upright", "total_steps": 800, **QUICK})
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
        BaselineConfig.from_dict({"penalti": 30})
    with pytest.raises(ValueError, match="penalty: must be >= 0"):
        BaselineConfig.from_dict({"penalty": -1.0})
    with pytest.raises(ValueError, match="no dynamics model"):
        BaselineConfig.from_dict({"sac": {"model_horizon": 3}})
    with pytest.raises(ValueError, match="not a built-in task"):
        _ = BaselineConfig.from_dict({"task": "my_robot"}).steps
    with pytest.raises(ValueError, match="must be one of sac, cpo, recovery_rl, sqrl"):
        BaselineConfig.from_dict({"algorithm": "ppo"})
    with pytest.raises(ValueError, match="config.cpo: step_size must be > 0"):
        BaselineConfig.from_dict({"cpo": {"step_size": 0.0}})
    with pytest.raises(ValueError, match="must lie in"):
        BaselineConfig.from_dict({"risk": {"gamma": 1.0}})
    # App. C.3: SAC's penalty 30; RecoveryRL "without the violation penalty"; eps 0.5, gamma 0.6, nu 30
    assert BaselineConfig().violation_penalty == 30.0
    assert BaselineConfig(algorithm="recovery_rl").violation_penalty is None   # the env's own reward
    assert BaselineConfig(algorithm="sqrl").reward(-0.5, 1.0) == -0.5
    assert BaselineConfig(algorithm="sac").reward(-0.5, 1.0) == -30.0
    r = BaselineConfig().risk
    assert (r.eps, r.gamma, r.nu, r.offline_random, r.offline_initial) == (0.5, 0.6, 30.0, 20000, 20000)
    assert BaselineConfig.from_dict({"task": "move"}).steps == 90000
    f = tmp_path / "c.yaml"
    f.write_text("task: tilt\npenalty: 10\n")
    with pytest.raises(ValueError, match="for task 'tilt', not 'upright'"):
        load_baseline_config("sac", f, "upright")
    cfg = load_baseline_config("sac", f, "tilt", seed=3, total_steps=None)
    assert (cfg.penalty, cfg.seed, cfg.total_steps) == (10.0, 3, 0)
    f.write_text("algorithm: sqrl\n")
    with pytest.raises(ValueError, match="is for 'sqrl', not 'sac'"):
        load_baseline_config("sac", f, "tilt")
    with pytest.raises(ValueError, match="unknown task"):
        load_baseline_config("sac", None, "walk")


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
    s1 = json.loads((tmp_path / "s1" / "summary.json").read_text())
    row = [x for x in out.splitlines() if x.startswith("upright  sac")][0].split()
    mean_v = (s0["violations"] + s1["violations"]) / 2
    assert row[2:5] == ["2", f"{mean_v:.1f},", str(max(s0["violations"], s1["violations"]))]
    # every algorithm's table gives its last and its best evaluation, from metrics.csv
    import csv

    with open(tmp_path / "s0" / "metrics.csv") as fh:
        evals = [float(r["eval_return"]) for r in csv.DictReader(fh) if r["eval_return"]]
    line = [x for x in out.splitlines() if x.startswith("sac s0")][0].split()
    assert line[-2:] == [f"{evals[-1]:.4g}", f"{max(evals):.4g}"]
    assert "last eval (mean +- std)" in out and "best eval (mean +- std)" in out
    assert main(["compare", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(fig), "--each"]) == 0
    assert main(["compare", str(tmp_path), "--out", str(fig)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "s0")]) == 2   # no certificate to audit
    assert "holds a sac run, not crabs: only CRABS runs have a certificate" in capsys.readouterr().err


def test_safety_critic_learns_the_discounted_probability_of_a_violation():
    """A chain -1 -> -1 (never violates), 0 -> 1 -> violation: Q_risk = 0, gamma_risk, 1."""
    torch.manual_seed(0)
    critic = SafetyCritic(1, 1, (32, 32), gamma=0.6, lr=3e-3, tau=0.05)
    s = torch.tensor([[-1.0], [0.0], [1.0]])
    s2 = torch.tensor([[-1.0], [1.0], [2.0]])
    batch = {"s": s, "a": torch.zeros(3, 1), "r": torch.tensor([0.0, 0.0, 1.0]), "s2": s2,
             "done": torch.tensor([0.0, 0.0, 1.0])}
    for _ in range(1500):
        critic.update(batch, lambda x: torch.zeros(len(x), 1))
    with torch.no_grad():
        q = critic(s, torch.zeros(3, 1))
    assert q.numpy() == pytest.approx([0.0, 0.6, 1.0], abs=0.05)


class _SignCritic(torch.nn.Module):
    """Q_risk(s, a) = sigmoid(50 (a - m)): risky (> 0.5) exactly for a > m."""

    def __init__(self, m: float):
        super().__init__()
        self.m = m

    def forward(self, s, a):
        return torch.sigmoid(50 * (a[..., 0] - self.m))


class _LinearCritic(torch.nn.Module):
    """Q_risk(s, a) = 0.6 + 0.1 a: every action risky (> 0.5), the lowest a the safest."""

    def forward(self, s, a):
        return 0.6 + 0.1 * a[..., 0]


S = np.array([0.3, -0.9])


def _mean(learner) -> float:
    with torch.no_grad():
        return float(learner.policy.mean_action(torch.as_tensor(S, dtype=torch.float32))[0])


def _learner(cls, tmp_path, **cfg):
    c = BaselineConfig.from_dict({"algorithm": cls.algorithm, "task": "upright", "total_steps": 300, **cfg})
    return cls(builtin_system("upright"), c, tmp_path, progress=False)


def test_recovery_rl_shields_risky_task_actions(tmp_path):
    """Where Q_risk(s, a_task) > eps_risk the recovery policy acts; the task policy still learns
    from its own proposal, the critic from what was executed."""
    rl = _learner(RecoveryRL, tmp_path)
    m = _mean(rl)
    rl.critic = _SignCritic(m)
    torch.manual_seed(0)
    pairs = [(d.action, d.proposed) for d in (rl.act(S) for _ in range(200))]
    with torch.no_grad():
        rec = rl.recovery.mean_action(torch.as_tensor(S, dtype=torch.float32)).double().numpy()
    risky = [p for p in pairs if p[1][0] > m]
    assert 50 < len(risky) < 150 and rl.shielded == len(risky)
    assert all(np.allclose(a_env, rec) for a_env, _ in risky)
    assert all(np.array_equal(a_env, a_task) for a_env, a_task in pairs if a_task[0] <= m)
    a_env, a_task = risky[0]
    rl.store(S, a_env, a_task, -0.1, S, 0.0, False)
    assert np.allclose(rl.buffer.a[0], a_task) and np.allclose(rl.risk_buffer.a[0], a_env)


def test_sqrl_takes_the_first_action_the_critic_accepts(tmp_path):
    q = _learner(SQRL, tmp_path)
    m = _mean(q)
    q.critic = _SignCritic(m)
    torch.manual_seed(0)
    acts = [q.act(S) for _ in range(100)]
    assert all(a[0] <= m for a in acts)   # of 100 samples one is always accepted
    assert 20 < q.shielded < 80           # the first sample was refused about half the time
    q.critic = _SignCritic(m + 0.01)      # evaluation: the mean action itself, when accepted ...
    assert np.allclose(q.eval_act(S)[0], m)
    q.critic = _LinearCritic()            # ... and the safest of the candidates when none is
    q.cfg.risk.samples = 5
    torch.manual_seed(1)
    with torch.no_grad():
        cands = q.policy.sample(torch.as_tensor(S, dtype=torch.float32)[None].expand(5, -1))[0]
    torch.manual_seed(1)
    assert q.eval_act(S)[0] == pytest.approx(min(m, float(cands[:, 0].min())), abs=1e-6)


@pytest.mark.parametrize("train", [train_recovery_rl, train_sqrl])
def test_offline_data_is_taken_through_the_monitor_and_counted(tmp_path, train, capsys):
    """RecoveryRL and SQRL are given offline data; the paper did not count it, crabs does."""
    torch.set_num_threads(1)
    algo = "recovery_rl" if train is train_recovery_rl else "sqrl"
    cfg = BaselineConfig.from_dict({"algorithm": algo, "task": "upright", "total_steps": 300, **QUICK,
                                    "risk": {"offline_random": 400, "offline_initial": 200,
                                             "pretrain_steps": 20, "batch": 32, "samples": 8}})
    summary = train("upright", cfg, tmp_path, progress=False)
    led = read_ledger(tmp_path / "ledger.jsonl")
    off = [r for r in led if r.get("tag") == "offline"]
    assert summary["offline_steps"] == 600 == sum(r["length"] for r in off if r["event"] == "episode")
    assert summary["offline_violations"] == sum(r["event"] == "violation" for r in off)
    assert summary["env_steps"] >= 900 and summary["violations"] >= summary["offline_violations"]
    assert summary["env_steps"] == ledger_totals(led).env_steps
    assert summary["algorithm"] == algo and summary["penalty"] is None
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0   # offline apart
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{algo} s0")][0].split()
    assert line[3:6] == [str(summary[k]) for k in ("env_steps", "violations", "offline_violations")]
    other = train_sac_penalty if algo == "sqrl" else train_sqrl
    with pytest.raises(ValueError, match=f"holds a {algo} run, not"):
        other(None, None, tmp_path, resume=True, progress=False)


def test_conjugate_gradient_solves_a_spd_system():
    from crabs.baselines.cpo import conjugate_gradient

    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 5, generator=g, dtype=torch.float64)
    A = m @ m.T + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=20)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-6)


@pytest.mark.parametrize("c", [-0.5, -0.05, 0.0, 0.05, 0.3])
@pytest.mark.parametrize("b", [(0.6, -0.8), (0.9, 0.5), (-0.7, -0.2)])
def test_cpo_step_solves_the_linearised_problem(c, b):
    """With H = I: max g.x s.t. c + b.x <= 0, |x|^2 / 2 <= delta (CPO's Eq. 10), against a brute
    force over the disc; when no point of the disc is feasible, the recovery step -sqrt(2 delta/s) b."""
    from crabs.baselines.cpo import cpo_step_direction

    delta = 0.02
    g = torch.tensor([1.0, 0.3], dtype=torch.float64)
    b = torch.tensor(b, dtype=torch.float64)
    q, r, s = float(g @ g), float(g @ b), float(b @ b)
    x, case = cpo_step_direction(g, b, q, r, s, c, delta)
    rho = math.sqrt(2 * delta)
    if c - rho * math.sqrt(s) > 0:   # even the best point of the disc violates the constraint
        assert case == "recovery"
        assert torch.allclose(x, -rho / math.sqrt(s) * b)
        return
    radius = torch.linspace(0, rho, 400, dtype=torch.float64)[:, None]
    angle = torch.linspace(0, 2 * math.pi, 2000, dtype=torch.float64)[None]
    pts = torch.stack([radius * angle.cos(), radius * angle.sin()], -1).reshape(-1, 2)
    feasible = pts[c + pts @ b <= 0]
    best = float((feasible @ g).max())
    assert 0.5 * float(x @ x) <= delta * (1 + 1e-6)
    assert c + float(b @ x) <= 1e-6
    assert float(g @ x) == pytest.approx(best, abs=2e-3)


def test_cpo_runs_on_policy_steps_and_counts_everything(tmp_path):
    from crabs.baselines import train_cpo

    torch.set_num_threads(1)
    cfg = BaselineConfig.from_dict({"algorithm": "cpo", "task": "upright", "total_steps": 2400,
                                    "eval_every": 300, "cpo": {"batch": 200, "vf_iters": 5}})
    summary = train_cpo("upright", cfg, tmp_path, progress=False)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    last = dict(zip(head, rows[-1].split(",")))
    # the i-th evaluation comes after i x eval_every of the learner's own steps: evaluation
    # episodes (200 steps here) count, but do not bring the next evaluation closer
    evals = [dict(zip(head, r.split(","))) for r in rows[1:]]
    learner_steps = [int(r["env_steps"]) - sum(int(e["eval_length"]) for e in evals[: i + 1])
                     for i, r in enumerate(evals)]
    assert all(n >= 300 * (i + 1) for i, n in enumerate(learner_steps[:-1])), learner_steps
    assert all(n % 300 < 200 for n in learner_steps[:-1])   # ... and within an episode of it
    assert len(evals) <= 2400 // 300 + 1
    assert int(last["cpo_updates"]) >= 2 and last["cpo_step"] in (
        "trpo", "constrained", "recovery", "trpo (rejected)", "constrained (rejected)", "recovery (rejected)")
    assert summary["env_steps"] == ledger_totals(read_ledger(tmp_path / "ledger.jsonl")).env_steps >= 700
    assert summary["offline_steps"] == 0 and summary["algorithm"] == "cpo"
    from crabs.initial import initial_policy, load_policy

    trained, _ = load_policy(tmp_path / "checkpoints" / "policy.pt")   # some CPO step was taken
    start = initial_policy("upright").state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in trained.state_dict().items())


def test_eval_summary_is_the_same_quantity_for_every_algorithm(tmp_path):
    """Last and best evaluation from metrics.csv; for CRABS only certified evaluations are best
    candidates (the pair it delivers), for a baseline every evaluation is."""
    from crabs.plots import eval_summary

    (tmp_path / "metrics.csv").write_text("epoch,eval_return,policy_certified\n0,-5,\n1,-1,False\n"
                                          "2,-3,True\n3,,True\n4,-4,True\n")
    assert eval_summary(tmp_path, "crabs") == {"last_eval": -4.0, "best_eval": -3.0, "evaluations": 4}
    assert eval_summary(tmp_path, "sac") == {"last_eval": -4.0, "best_eval": -1.0, "evaluations": 4}
    (tmp_path / "metrics.csv").write_text("epoch,eval_return\n")
    assert eval_summary(tmp_path, "cpo") == {"last_eval": None, "best_eval": None, "evaluations": 0}
