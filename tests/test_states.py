"""Samples of C_h: the slabs next to the safety limits (``edge_states``) that the audits look at
besides uniform states of C_h, because B_safe's cliff there makes slivers too thin for those, and
the states the closed loop visits under the model (``rollout_states``)."""

import torch

from crabs.envs import SafetySpec
from crabs.states import certified_states, edge_states, rollout_states

SPEC = SafetySpec(("x", "v"), {"x": 1.0}, (0.0, 0.0), 10)


class Disc(torch.nn.Module):
    """h >= 0 on the disc of radius 0.98 (C_h reaches into both x slabs)."""

    def forward(self, s):
        return 0.98 ** 2 - (s ** 2).sum(-1)


def test_edge_states_lie_in_c_h_next_to_each_limit():
    low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    g = torch.Generator().manual_seed(0)
    s = edge_states(Disc(), (low, high), SPEC, 2000, 0.05, g)
    assert len(s) == 2000 and (Disc()(s) >= 0).all()
    assert (s[:, 0].abs() >= 0.95).all()                                 # only in the slabs of x
    assert (s[:, 0] > 0).sum() == (s[:, 0] < 0).sum() == 1000           # both sides alike
    # a uniform sample of C_h puts about 0.6% of its states there: the slabs get 150 times as many
    u = certified_states(Disc(), (low, high), 2000, g)
    assert (u[:, 0].abs() >= 0.95).float().mean() < 0.05


def test_no_slab_in_the_box_gives_no_states():
    low, high = torch.tensor([-0.5, -1.0]), torch.tensor([0.5, 1.0])   # the box stops short of |x| = 0.95
    assert len(edge_states(Disc(), (low, high), SPEC, 100, 0.05, torch.Generator().manual_seed(0))) == 0


def test_the_slabs_follow_the_edge_pad():
    """With h's edge pad (C_h kept pad x the limit inside it) the slabs move inwards with it."""
    h = Disc()
    h.pad = torch.tensor([0.2])
    low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    s = edge_states(h, (low, high), SPEC, 200, 0.05, torch.Generator().manual_seed(0))
    assert len(s) == 200 and ((s[:, 0].abs() >= 0.75) & (s[:, 0].abs() <= 0.8)).all()
    assert len(edge_states(h, (low, high), SPEC, 0, 0.05, None)) == 0


class Flow(torch.nn.Module):
    """A toy model and policy: x moves right by 0.1 a step (and leaves the disc) where v > 0, is at
    rest where v < 0, and a NaN prediction comes out at v = 0 exactly."""

    def means(self, s, a):
        x, v = s[..., 0], s[..., 1]
        nx = torch.where(v > 0, x + 0.1, x)
        nx = torch.where(v == 0, torch.full_like(x, float("nan")), nx)
        return torch.stack([nx, v], -1)[None].expand(2, *s.shape)

    def mean_action(self, s):
        return torch.zeros(*s.shape[:-1], 1)


def test_rollout_states_follow_the_closed_loop_until_it_leaves_or_rests():
    flow = Flow()
    starts = torch.tensor([[0.0, 0.5], [0.0, -0.5], [0.0, 0.0]])
    s = rollout_states(Disc(), flow, flow, starts, steps=50)
    assert (Disc()(s) >= 0).all() and torch.isfinite(s).all()            # only states of C_h, no NaN
    moving = s[s[:, 1] > 0]
    # x = 0.1, ..., 0.8 are inside the disc (0.8^2 + 0.5^2 < 0.98^2), 0.9 is not: followed until then
    assert torch.allclose(moving[:, 0], torch.arange(1, 9) * 0.1)
    assert (s[:, 1] < 0).sum() == 1     # the state at rest is visited once, then not followed further
    assert len(rollout_states(Disc(), flow, flow, starts[:0], steps=50)) == 0
    assert len(rollout_states(Disc(), flow, flow, starts, steps=0)) == 0
