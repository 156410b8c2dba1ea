"""The handcrafted-h ablation (Sec. 6: Algorithm 2 without Line 5): the Lyapunov solve, R.1/R.2 by
construction, the level rule on a toy linear system, the config keys, and a tiny Upright run that
never trains h and is named ``crabs_handcrafted``."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from tiny import TINY
from torch import nn

from crabs.barrier import Barrier, CertificateTrainer
from crabs.config import BarrierConfig, Config, algorithm_of, load_config, parse_overrides
from crabs.envs import SafetySpec, get_task
from crabs.handcrafted import (
    HandcraftedBarrier,
    barrier_type,
    build_handcrafted,
    level_states,
    lyapunov_matrix,
    worst_U,
)
from crabs.loop import CRABS
from crabs.system import builtin_system

HAND = {"init": "handcrafted", "learn": False}


def test_lyapunov_matrix_solves_the_discrete_equation():
    A = np.array([[0.9, 0.2], [-0.1, 0.7]])
    P = lyapunov_matrix(A)
    assert np.allclose(A.T @ P @ A - P, -np.eye(2), atol=1e-10)
    assert np.allclose(P, P.T) and np.linalg.eigvalsh(P).min() > 0
    Q = np.eye(2) + 10.0 * np.array([[1.0, 2.0]]).T @ np.array([[1.0, 2.0]])
    assert np.allclose(A.T @ lyapunov_matrix(A, Q) @ A - lyapunov_matrix(A, Q), -Q, atol=1e-8)
    with pytest.raises(ValueError, match="not stable"):
        lyapunov_matrix(np.array([[1.01, 0.0], [0.0, 0.5]]))


def _upright_hand(P=None, level=1.0, center=(0.0, 0.0)) -> HandcraftedBarrier:
    t = get_task("upright")
    h = HandcraftedBarrier.for_box(t.spec, BarrierConfig(**HAND), *t.box())
    h.set_quadratic(torch.tensor(center), torch.eye(2) if P is None else P, level)
    return h


def test_handcrafted_h_holds_R1_and_R2_by_construction():
    t = get_task("upright")
    h = HandcraftedBarrier.for_box(t.spec, BarrierConfig(**HAND), *t.box())
    with pytest.raises(RuntimeError, match="no level yet"):   # never a silent placeholder
        h(h.s0[None])
    assert list(h.parameters()) == [] and h.f is None
    unsafe = torch.stack([torch.linspace(1.5001, 3.0, 200), torch.linspace(-8, 8, 200)], -1)
    unsafe = torch.cat([unsafe, unsafe * torch.tensor([-1.0, 1.0])])
    for P, level in ((torch.eye(2), 1.0), (torch.tensor([[20.0, 10.0], [10.0, 8.0]]), 1e6)):
        h = _upright_hand(P, level)
        # R.1: the level rule keeps V(s0) <= c log 2; here directly: h(s0) = 1 - V(s0) / c, with V
        # computed here from P and the box scaling (centre 0), not by h
        x = h.s0.double().numpy() / h.scale.double().numpy()
        v0 = float(x @ P.double().numpy() @ x)
        assert v0 > 0 and float(h(h.s0[None])[0]) == pytest.approx(1 - v0 / level, rel=1e-5, abs=1e-6)
        # R.2: h < 0 outside the safe set whatever P and c (even when V / c is ~0 there)
        assert bool((h(unsafe) < 0).all())
    h = _upright_hand(level=10.0)
    snap = CertificateTrainer(h, BarrierConfig(**HAND)).snapshot()
    assert torch.equal(snap.P, h.P) and float(snap.level) == 10.0
    with pytest.raises(TypeError, match="never dilated"):
        h.dilate(0.3)


def test_handcrafted_state_round_trips_through_a_state_dict():
    h = _upright_hand(torch.tensor([[3.0, 1.0], [1.0, 2.0]]), 4.0, center=(0.1, -0.2))
    h.widen_pad(torch.tensor([0.05]))
    blob = copy.deepcopy(h.state_dict())
    assert set(blob) >= {"P", "level", "center", "pad", "s0", "scale"}
    t = get_task("upright")
    g = HandcraftedBarrier.for_box(t.spec, BarrierConfig(**HAND), *t.box())
    g.load_state_dict(blob)
    s = torch.rand(500, 2) * torch.tensor([3.0, 16.0]) - torch.tensor([1.5, 8.0])
    assert torch.equal(g(s), h(s))
    cert = CertificateTrainer(g, BarrierConfig(**HAND))
    assert cert.opt is None and cert.state_dict()["opt"] == {}
    cert.load_state_dict(cert.state_dict())
    with pytest.raises(RuntimeError, match="no parameters"):
        cert.step(None, None, s, None, None)
    assert barrier_type(BarrierConfig(**HAND)) is HandcraftedBarrier
    assert barrier_type(BarrierConfig(init="handcrafted")) is Barrier


# -- the level rule on a toy linear system ------------------------------------------------------
A_TOY = torch.tensor([[1.0, 0.1], [0.0, 1.0]])
B_TOY = torch.tensor([[0.005], [0.1]])
K_TOY = torch.tensor([[1.0, 1.5]])   # a = -K s: closed loop eigenvalues ~0.93, 0.92


class ToyModel:
    """An 'ensemble' of K identical linear models s' = A s + B a."""

    def means(self, s, a):
        return (s @ A_TOY.T + a @ B_TOY.T)[None].expand(3, *s.shape)


class ToyPolicy(nn.Module):
    def mean_action(self, s):
        return -s @ K_TOY.T


def test_level_rule_keeps_the_toy_linear_system_invariant():
    spec = SafetySpec(("x", "v"), {"x": 1.0}, s0=(0.5, 0.0), horizon=100)
    cfg = BarrierConfig(**HAND)
    h = HandcraftedBarrier.for_box(spec, cfg, [-1.0, -2.0], [1.0, 2.0])
    gen = torch.Generator().manual_seed(0)
    info = build_handcrafted(h, ToyModel(), ToyPolicy(), n=2048, eps=cfg.eps, margin=cfg.train_margin,
                             gen=gen)
    need = cfg.eps + cfg.train_margin
    assert info["hand_invariant"] and info["hand_max_U"] + need <= 0
    assert torch.allclose(h.center, torch.zeros(2), atol=1e-4)   # the closed loop's equilibrium
    # P solves the Lyapunov equation of the chosen control weight in box-scaled coordinates
    r = torch.tensor([1.0, 2.0], dtype=torch.float64)
    A_cl = (A_TOY - B_TOY @ K_TOY).double()
    A = A_cl * r[None, :] / r[:, None]
    K = K_TOY.double() * r[None, :]
    Q = torch.eye(2, dtype=torch.float64) + info["hand_weight"] * K.T @ K
    P = h.P.double()
    assert torch.allclose(A.T @ P @ A - P, -Q, rtol=1e-3, atol=1e-3 * float(Q.abs().max()))
    # R.1 with the level rule's margin, and invariance on fresh uniform states of C_h
    assert float(h(h.s0[None])[0]) >= 1 - math.log(2) - 1e-5
    s = torch.rand(20000, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([2.0, 4.0]) - \
        torch.tensor([1.0, 2.0])
    s = s[h(s) >= 0]
    assert len(s) > 100
    nxt = ToyModel().means(s, ToyPolicy().mean_action(s))[0]
    assert float(h(nxt).min()) >= cfg.eps
    # the largest such level: half as much again is no longer invariant (the safe set's edge)
    c = float(h.level)
    h.set_quadratic(h.center, h.P, 1.5 * c)
    low, high = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
    assert worst_U(h, ToyModel(), ToyPolicy(), level_states(h, 2048, low, high, gen)) + need > 0


# -- config --------------------------------------------------------------------------------------
def test_config_refuses_learn_false_without_a_handcrafted_h():
    for init in ("rollout", "none"):
        with pytest.raises(ValueError) as e:
            Config.from_dict({"barrier": {"init": init, "learn": False}})
        msg = str(e.value)
        assert "\n" not in msg and "barrier.learn" in msg and "init: handcrafted" in msg
        assert "not a certificate" in msg
    with pytest.raises(ValueError) as e:
        Config.from_dict({"barrier": {"init": "by_hand"}})
    assert str(e.value) == "config.barrier.init: must be 'rollout', 'none' or 'handcrafted', got 'by_hand'"
    with pytest.raises(ValueError, match="true/false"):
        Config.from_dict({"barrier": {"learn": "no"}})
    # what `crabs train --task upright --set barrier.init=handcrafted --set barrier.learn=false` builds
    cfg = load_config(task="upright", overrides=parse_overrides(["barrier.init=handcrafted",
                                                                 "barrier.learn=false"]))
    assert cfg.barrier.init == "handcrafted" and cfg.barrier.learn is False
    assert algorithm_of(cfg.to_dict()) == "crabs_handcrafted"
    assert algorithm_of(Config().to_dict()) == "crabs"
    assert algorithm_of({"algorithm": "sac"}) == "sac"
    with pytest.raises(ValueError, match="not a certificate"):
        load_config(task="upright", overrides=parse_overrides(["barrier.learn=false"]))
    # handcrafted with learning: only the start of h (a neural f fitted to it, then Alg. 1)
    assert Config.from_dict({"barrier": {"init": "handcrafted"}}).barrier.learn is True


# -- a tiny Upright run -------------------------------------------------------------------------
class Spy(CRABS):
    """CRABS recording h before every epoch and refusing every step that would train h."""

    def run_epoch(self):
        self.h_states = getattr(self, "h_states", []) + [copy.deepcopy(self.h.state_dict())]
        return super().run_epoch()

    def train_certificate(self, *a, **k):
        raise AssertionError("Alg. 1 ran with barrier.learn: false")

    def update_certificate(self, *a, **k):
        raise AssertionError("line 5 ran with barrier.learn: false")

    def fit_to_rollouts(self, *a, **k):
        raise AssertionError("h was refitted with barrier.learn: false")


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hand")
    torch.set_num_threads(1)
    cfg = Config.from_dict({**TINY, "barrier": {**TINY["barrier"], **HAND}})
    seen = {}
    orig = Spy.make_plots

    def make_plots(self):   # the runner's final h, after the run (before the plots)
        seen["runner"] = self
        orig(self)

    Spy.make_plots = make_plots
    try:
        summary = Spy.train("upright", cfg, out, progress=False)
    finally:
        Spy.make_plots = orig
    return out, summary, seen["runner"]


def test_handcrafted_run_never_trains_h_and_is_its_own_algorithm(hand_run):
    out, summary, runner = hand_run
    assert summary["violations"] == 0 and summary["epochs"] == 2
    assert summary["algorithm"] == "crabs_handcrafted"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert isinstance(runner.h, HandcraftedBarrier) and list(runner.h.parameters()) == []
    # h after start-up (before epoch 1), before epoch 2 and at the end: the same, pad included
    end = runner.h.state_dict()
    assert len(runner.h_states) == 2
    for st in runner.h_states:
        assert st.keys() == end.keys() and all(torch.equal(st[k], end[k]) for k in end)
    assert float(end["level"]) > 0 and float(runner.h(runner.h.s0[None])[0]) >= 1 - math.log(2) - 1e-5
    # the checkpoint is a CRABS checkpoint (resume, verify and judge read it) holding that h
    blob = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert blob["algorithm"] == "crabs" and blob["barrier"]["opt"] == {}
    assert all(torch.equal(blob["barrier"]["h"][k], end[k]) for k in end)
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    # the start-up row says what was built; no Alg. 1 ran, at start-up or in an epoch
    start = rows[0]
    assert float(start["hand_level"]) == pytest.approx(float(end["level"]))
    need = runner.cfg.barrier.eps + runner.cfg.barrier.train_margin
    assert (start["hand_invariant"] == "True") == (float(start["hand_max_U"]) + need <= 0)
    assert all(not r.get("cert_steps") and not r.get("dilation") for r in rows)


def test_verify_and_judge_read_a_handcrafted_run(hand_run):
    from crabs.judge import load_barrier
    from crabs.verify import load_run, verify_run

    out, summary, runner = hand_run
    pair = load_run(out, which="last")
    assert isinstance(pair.h, HandcraftedBarrier)
    assert all(torch.equal(pair.h.state_dict()[k], v) for k, v in runner.h.state_dict().items())
    res = verify_run(out, n=2000, states=5, chains_mult=1, steps=20)
    assert res["R1_R2"]["certified_but_unsafe"] == 0 and res["R1_R2"]["certified"] > 0
    assert res["R3_true_dynamics"]["rollouts_violating"] == 0
    h, _ = load_barrier(out)
    assert isinstance(h, HandcraftedBarrier) and torch.equal(h.P, runner.h.P)


def test_handcrafted_start_with_learning_fits_a_network_then_runs_alg1(tmp_path):
    """``init: handcrafted`` with ``learn: true`` only starts h: f is fitted to the handcrafted C_h."""
    torch.set_num_threads(1)
    tiny = {**TINY, "barrier": {**TINY["barrier"], "init": "handcrafted", "pretrain_steps": 20}}
    c = CRABS(builtin_system("upright"), Config.from_dict(tiny), tmp_path, progress=False)
    info = c.startup()
    assert type(c.h) is Barrier and c.cert.opt is not None
    assert info["fit_accuracy"] > 0.9 and "hand_level" in info and "cert_steps" in info
