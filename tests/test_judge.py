"""Judging certificates against the oracle: an unsound certificate is caught."""

import torch
from torch import nn

from crabs.barrier import Barrier
from crabs.config import BarrierConfig
from crabs.envs import get_task
from crabs.judge import judge_certificate


def _flat_h(bias: float) -> Barrier:
    t = get_task("upright")
    low, high = t.box()
    h = Barrier(t.spec, BarrierConfig(hidden=(8,)), torch.as_tensor((high - low) / 2), low, high)
    with torch.no_grad():
        nn.init.zeros_(h.f[-1].weight)
        nn.init.constant_(h.f[-1].bias, bias)
    return h


def test_certifying_the_whole_safe_set_is_caught():
    # f constant: C_h = {|theta| <= 0.99 * 1.5}, most of which is not viable
    r = judge_certificate(_flat_h(0.0), n_theta=61, n_theta_dot=65)
    assert r["certified"] > 0.9
    assert 0.18 < r["viable"] < 0.26                 # the kernel is about 22% of the box
    assert r["certified_not_viable"] > 0.6 and r["kernel_covered"] > 0.95


def test_a_small_certificate_around_the_origin_is_sound():
    # only a small ellipse around upright rest is certified (|theta| <= 0.11, |theta_dot| <= 0.58)
    h = _flat_h(0.0)
    h.f = nn.Sequential(nn.Identity())
    h.f_rel = lambda s: 200.0 * ((s / h.scale) ** 2).sum(-1) - 0.5  # noqa: E731
    r = judge_certificate(h, n_theta=61, n_theta_dot=65)
    assert 0 < r["certified"] < 0.05
    assert r["certified_not_viable_states"] == 0
