"""Gated certification (a found counter-example always blocks) and defence in depth at every real
step (the guards of exploration and evaluation, the response to a state outside C_h)."""

import dataclasses

import numpy as np
import pytest
import torch

from crabs.barrier import Barrier
from crabs.certify import Certifier
from crabs.config import BarrierConfig, MALAConfig
from crabs.envs import SafetySpec, read_ledger
from crabs.explore import guarded_action, safeguarded_action
from crabs.mala import Adversary

SPEC = SafetySpec(state_names=("x", "v"), limits={"x": 1.0}, s0=(0.0, 0.0), horizon=50)
LOW, HIGH = np.array([-1.0, -1.0]), np.array([1.0, 1.0])


class BumpModel(torch.nn.Module):
    """A toy T-hat: every state moves half-way to 0 (C_h is invariant with room to spare) except in
    a small square ``bump`` (a planted counter-example region), from where every member throws the
    state out of the safe set."""

    def __init__(self, bump=None):
        super().__init__()
        self.bump = bump

    def means(self, s, a):
        nxt = 0.5 * s
        if self.bump is not None:
            (x0, x1), (v0, v1) = self.bump
            inside = (s[..., 0] > x0) & (s[..., 0] < x1) & (s[..., 1] > v0) & (s[..., 1] < v1)
            nxt[..., 0] = torch.where(inside, torch.full_like(s[..., 0], 3.0), nxt[..., 0])
        return nxt[None].expand(3, *s.shape)


class ZeroPolicy(torch.nn.Module):
    def __init__(self, value=0.0):
        super().__init__()
        self.value = value

    def mean_action(self, s):
        return torch.full((*s.shape[:-1], 1), self.value)


def _certifier(audit: bool, chains: int = 4):
    cfg = BarrierConfig(hidden=(16,), audit=audit, audit_samples=20000, quiet_steps=3)
    h = Barrier.for_box(SPEC, cfg, LOW, HIGH)
    with torch.no_grad():      # f = 0: C_h = {h >= 0} is the box minus B_safe's margin
        for p in h.parameters():
            p.zero_()
    adv = Adversary(LOW, HIGH, MALAConfig(chains=chains), seed=0)
    return Certifier(adv, cfg, torch.Generator().manual_seed(1)), h


def test_a_planted_counter_example_blocks_certification():
    """A bump of 1e-3 of C_h where U > 0: a tiny adversary misses it, the audit does not."""
    bump = ((0.30, 0.3316), (0.30, 0.3316))           # 0.0316^2 = 1e-3 of the 2 x 2 box
    model, policy = BumpModel(bump), ZeroPolicy()
    quiet, h = _certifier(audit=False)
    assert quiet.check(h, model, policy, steps=2)      # the adversary alone certifies it
    gated, h = _certifier(audit=True)
    assert not gated.check(h, model, policy, steps=2)  # the audit blocks it
    assert gated.catches == 1
    clean, h = _certifier(audit=True)
    assert clean.check(h, BumpModel(None), policy, steps=2) and clean.catches == 0


def test_alg1_trains_on_the_audits_counter_examples_and_starts_over():
    bump = ((0.30, 0.3316), (0.30, 0.3316))
    c, h = _certifier(audit=True)
    seen = []

    def update(w):
        seen.append(w)
        c.adv.invalidate()

    quiet, steps = c.until_quiet(h, BumpModel(bump), ZeroPolicy(), max_steps=40, update=update)
    assert not quiet and steps == 40                   # never certified while the bump stands
    w = torch.cat(seen)
    assert len(w) > 0
    assert bool(((w[:, 0] > 0.30) & (w[:, 0] < 0.3316) & (w[:, 1] > 0.30) & (w[:, 1] < 0.3316)).all())


@pytest.mark.parametrize("mode", ["until_fixed", "once"])
def test_the_audits_counter_examples_are_trained_on_until_none_is_left(mode):
    """barrier.audit_train: a bump that ten updates remove (a stand-in for h or the policy learning
    there) and a tiny adversary that never finds it. until_fixed trains on the audit's finds ten
    times in a row and then certifies; once (the fourth freeze) gives them one update per audit,
    and the adversary's quiet windows in between eat the budget."""
    bump = ((0.30, 0.3316), (0.30, 0.3316))
    c, h = _certifier(audit=True)
    c.cfg = dataclasses.replace(c.cfg, audit_train=mode)
    model, left, sizes = BumpModel(bump), [10], []

    def update(w):
        sizes.append(len(w))
        left[0] -= 1
        if left[0] == 0:
            model.bump = None
        c.adv.invalidate()

    quiet, steps = c.until_quiet(h, model, ZeroPolicy(), max_steps=40, update=update)
    if mode == "until_fixed":
        assert quiet and steps < 40 and len(sizes) == 10
        assert len(set(sizes)) == 1                     # the same found states, ten steps in a row
    else:
        assert not quiet and steps == 40 and len(sizes) < 10


def test_audit_train_is_checked():
    with pytest.raises(ValueError, match="audit_train: must be 'until_fixed' or 'once'"):
        BarrierConfig(audit_train="twice").validate("barrier")


def test_the_audit_looks_at_the_replay_states_in_C_h():
    """A counter-example only where the data lies (too thin for uniform samples) is found there."""
    bump = ((0.5, 0.5001), (0.5, 0.5001))
    c, h = _certifier(audit=True)
    c.cfg = dataclasses.replace(c.cfg, audit_samples=100)
    assert len(c.audit(h, BumpModel(bump), ZeroPolicy())) == 0
    c.replay = lambda: torch.tensor([[0.50005, 0.50005], [0.0, 0.0]])
    w = c.audit(h, BumpModel(bump), ZeroPolicy())
    assert len(w) == 1 and float(w[0, 0]) > 0.5       # the data state in the bump, not (0, 0)


def test_the_audit_can_sample_the_slabs_next_to_the_limits():
    """barrier.audit_edge_samples: a sliver of 1e-5 of C_h just inside the x limit (the kind held-out
    Swing seed 10 had) slips past 100 uniform states of C_h but not past 200,000 of the slabs."""
    bump = ((0.975, 0.9799), (0.0, 0.004))            # 0.0049 x 0.004 = 2e-5 of the 2 x 2 box
    c, h = _certifier(audit=True)
    c.cfg = dataclasses.replace(c.cfg, audit_samples=100, audit_edge_samples=0)
    assert len(c.audit(h, BumpModel(bump), ZeroPolicy())) == 0
    c.cfg = dataclasses.replace(c.cfg, audit_edge_samples=200000)
    w = c.audit(h, BumpModel(bump), ZeroPolicy())
    assert len(w) > 0 and bool((w[:, 0] > 0.975).all())


def test_the_default_audit_finds_a_sliver_as_dense_as_held_out_swings_every_time():
    """The default ``audit_edge_samples`` (4000): a sliver at the x limit holding 0.28% of the slabs'
    part of C_h (held-out Swing seed 10's, which `crabs verify` found at 6 of 2133 slab states) is found
    by each of 20 audits, with the uniform part too small (100 states) to find it."""
    assert BarrierConfig().audit_edge_samples == 4000
    bump = ((0.975, 0.98), (0.0, 0.09))                # 4.5e-4: 0.28% of the two slabs' 0.16 of C_h
    c, h = _certifier(audit=True)
    c.cfg = dataclasses.replace(c.cfg, audit_samples=100)
    found = [len(c.audit(h, BumpModel(bump), ZeroPolicy())) for _ in range(20)]
    assert min(found) > 0, found
    c, h = _certifier(audit=True)                      # a fresh memory, and none kept
    c.cfg = dataclasses.replace(c.cfg, audit_samples=100, audit_edge_samples=0, audit_rollouts=0,
                                audit_memory=0)
    found = [len(c.audit(h, BumpModel(bump), ZeroPolicy())) for _ in range(20)]
    assert sum(n > 0 for n in found) <= 2, found      # uniform states of C_h alone: rarely


def test_the_delivery_audit_finds_a_sliver_the_training_audit_can_miss():
    """barrier.delivery_audit: a sliver of 5e-6 of the box at the x limit (1 in 4000 of the slabs'
    part of C_h, rarer than held-out planar_puck's) escapes most regular audits at the default slab
    size, never the delivery audit at its default size."""
    n = BarrierConfig().delivery_audit
    assert n == 100000
    bump = ((0.976, 0.9785), (0.0, 0.004))             # 0.0025 x 0.004 = 1e-5 of the 2 x 2 box's area 4
    c, h = _certifier(audit=True)
    c.cfg = dataclasses.replace(c.cfg, audit_samples=100, audit_rollouts=0)
    regular = [len(c.audit(h, BumpModel(bump), ZeroPolicy())) > 0 for _ in range(10)]
    assert sum(regular) <= 8, regular                  # the default 4000 slab states: often missed
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        w = c.delivery_audit(h, BumpModel(bump), ZeroPolicy(), n, SPEC.horizon, gen)
        assert len(w) > 0 and bool(((w[:, 0] > 0.976) & (w[:, 0] < 0.9785)).all())
    assert len(c.delivery_audit(h, BumpModel(), ZeroPolicy(), n, SPEC.horizon, gen)) == 0   # nothing to find


def test_a_counter_example_once_found_blocks_every_later_audit():
    """barrier.audit_memory: the sliver the delivery audit found is re-checked by every later
    regular audit (which alone misses it most of the time), until the triple no longer fails there;
    with the memory off the regular audit is on its own again."""
    assert BarrierConfig().audit_memory == 10000
    bump = ((0.976, 0.9785), (0.0, 0.004))
    c, h = _certifier(audit=True)
    c.cfg = dataclasses.replace(c.cfg, audit_samples=100, audit_rollouts=0, audit_edge_samples=50)
    assert not any(len(c.audit(h, BumpModel(bump), ZeroPolicy())) for _ in range(5))   # it misses
    found = c.delivery_audit(h, BumpModel(bump), ZeroPolicy(), 100000, SPEC.horizon,
                             torch.Generator().manual_seed(0))
    assert len(found) > 0 and len(c.memory) == len(found)
    for _ in range(5):                                   # now every audit blocks
        assert len(c.audit(h, BumpModel(bump), ZeroPolicy())) >= len(found)
    assert len(c.audit(h, BumpModel(None), ZeroPolicy())) == 0   # fixed there: it passes
    off, h = _certifier(audit=True)
    off.cfg = dataclasses.replace(c.cfg, audit_memory=0)
    off.delivery_audit(h, BumpModel(bump), ZeroPolicy(), 100000, SPEC.horizon,
                       torch.Generator().manual_seed(0))
    assert len(off.memory) == 0 and not len(off.audit(h, BumpModel(bump), ZeroPolicy()))


class LeakModel(torch.nn.Module):
    """A closed loop that creeps out of C_h: v is drawn to 0.5 everywhere (halving the gap each step)
    and x halves, except in a channel |v - 0.5| < 0.001, where x creeps right by 0.01 a step until
    it crosses C_h's edge. The counter-examples (channel states within a step of the edge) hold
    about 5e-6 of the box: uniform samples miss them, while every trajectory ends up there."""

    def means(self, s, a):
        x, v = s[..., 0], s[..., 1]
        channel = (v - 0.5).abs() < 0.001
        nxt = torch.stack([torch.where(channel, x + 0.01, 0.5 * x), 0.5 * v + 0.25], -1)
        return nxt[None].expand(3, *s.shape)


def test_the_audit_follows_the_closed_loop_to_where_it_leaves_C_h():
    """barrier.audit_rollouts: tuning Tilt seed 1's delivered policy crept out of C_h from every
    certified start (a state near the hold point drifting 0.0004 rad a step), in a strip along C_h's
    edge that neither the adversary nor 20,000 uniform states found; rolling the mean policy out
    under the model from the audit's uniform states finds it."""
    c, h = _certifier(audit=True)
    c.cfg = dataclasses.replace(c.cfg, audit_samples=200, audit_edge_samples=0, audit_rollouts=0)
    assert len(c.audit(h, LeakModel(), ZeroPolicy())) == 0
    c.cfg = dataclasses.replace(c.cfg, audit_rollouts=8, audit_rollout_steps=200)
    w = c.audit(h, LeakModel(), ZeroPolicy())
    assert len(w) > 0
    assert bool(((w[:, 0] > 0.95) & ((w[:, 1] - 0.5).abs() < 0.001)).all())   # the channel at the edge
    assert len(c.memory) == len(w)                       # remembered (barrier.audit_memory) ...
    c.memory = c.memory[:0]                              # ... forgotten, to judge the rollouts alone:
    c.cfg = dataclasses.replace(c.cfg, audit_rollout_steps=20)   # too short to get there
    assert len(c.audit(h, LeakModel(), ZeroPolicy())) == 0
    assert BarrierConfig().audit_rollouts > 0 and BarrierConfig().audit_rollout_steps >= 200


class PushModel(torch.nn.Module):
    """x' = x + a: an action keeps x in the safe set or pushes it out."""

    def means(self, s, a):
        nxt = s.clone()
        nxt[..., 0] = s[..., 0] + a[..., 0]
        return nxt[None].expand(2, *s.shape)


def test_the_guards_take_a_certified_candidate_else_the_lowest_U():
    cfg = BarrierConfig(hidden=(16,))
    h = Barrier.for_box(SPEC, cfg, LOW, HIGH)
    with torch.no_grad():
        for p in h.parameters():
            p.zero_()
    s = np.array([0.5, 0.0])
    out, back, hold = ZeroPolicy(0.9), ZeroPolicy(-0.3), ZeroPolicy(0.0)
    r = guarded_action(s, [out, back, hold], h, PushModel())
    assert r.action[0] == pytest.approx(-0.3) and r.safeguard and r.U <= 0    # the first certified
    r = guarded_action(s, [out, ZeroPolicy(0.8)], h, PushModel())
    assert r.action[0] == pytest.approx(0.8) and r.U > 0                      # none: the lowest U
    r = guarded_action(s, [hold, back], h, PushModel())
    assert r.action[0] == 0.0 and not r.safeguard                             # the policy's own

    class OutPolicy(torch.nn.Module):   # pi_expl pushes out whatever the noise
        def forward(self, s):
            return torch.full((*s.shape[:-1], 1), 3.0), torch.full((*s.shape[:-1], 1), -5.0)

    g = torch.Generator().manual_seed(0)
    paper = safeguarded_action(s, OutPolicy(), h, PushModel(), n=10, gen=g)
    assert paper.safeguard and paper.U > 0                  # the paper's safeguard: pi(s), unsafe
    g = torch.Generator().manual_seed(0)
    ours = safeguarded_action(s, OutPolicy(), h, PushModel(), n=10, gen=g, fallbacks=[out, back])
    assert ours.safeguard and ours.U <= 0 and ours.action[0] == pytest.approx(-0.3)


def test_a_real_state_outside_C_h_is_ledgered_and_ends_a_guarded_episode(tmp_path):
    from crabs.config import Config
    from crabs.loop import CRABS
    from crabs.rollout import Decision, mean_actor
    from crabs.system import builtin_system

    cfg = Config.from_dict({"task": "upright", "dynamics": {"hidden": [16]}, "barrier": {"hidden": [16]}})
    crabs = CRABS(builtin_system("upright"), cfg, tmp_path, progress=False)
    crabs.h = lambda x: torch.where(x[..., 0] > 0.2, -1.0, 1.0)  # C_h: theta <= 0.2
    act = mean_actor(crabs.policy)
    env = crabs.env("explore")
    us = iter([0.5, -0.5] * 200)   # alternately: U > 0 (an exit), U <= 0 (a model failure)
    ep, fails, exits = crabs.episode(env, lambda s: Decision(act(s), False, next(us)), "test", guarded=True)
    assert ep.length == 1 and exits == 1 and fails == 0       # s0 = (0.3, -0.9) is outside already
    ep, fails, exits = crabs.episode(env, lambda s: Decision(act(s), False, next(us)), "test", guarded=False)
    env.close()
    assert ep.length == 200                                   # unguarded: noted, not stopped
    notes = [r for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] in ("exit_C_h", "model_failure")]
    assert notes[0]["event"] == "exit_C_h" and notes[0]["stopped"] is True and notes[0]["U"] == 0.5
    rest = notes[1:]
    # each step outside C_h is named by its U: predicted outside (U > 0) an exit, else a model failure
    assert all((r["event"] == "exit_C_h") == (r["U"] > 0) and r["h_next"] < 0 and not r["stopped"]
               for r in rest)
    assert {r["event"] for r in rest} == {"exit_C_h", "model_failure"}
    assert (fails, exits) == (sum(r["event"] == "model_failure" for r in rest),
                              sum(r["event"] == "exit_C_h" for r in rest))
    assert crabs.counters.violations == 0
