"""How often certification finds a planted counter-example (issue 22, item 3).

A certified set C_h and a model under which it is invariant with room to spare; then a region
holding a fraction p of C_h's volume is planted where the model throws every state out of the safe
set (U > 0 there). The bench reports how often the adversary's own stop rule (``Certifier.check``
with the audit off: two fresh pools of ``mala.chains`` chains, ``quiet_steps`` MALA steps each) and
gated certification (the same plus the audit) find it, over random placements; and how often
``crabs verify``'s fresh adversary (4x the chains, 200 steps) sees U > 0 where its chains stand at
the last step (what it reported before cf0bfd1) and at any of its steps (what it reports now).

Two kinds of region: "plateau" (U jumps at the region's edge: nothing guides MALA toward it, the
hardest case for the sampler) and "slope" (the model's push grows smoothly toward the region's
centre, U rising over a neighbourhood 3x the region's width, as a smooth learned model would).

    python bench/adversary_power.py [--dims 2 4] [--fractions 1e-2 1e-3 1e-4] [--trials 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time

import numpy as np
import torch

from crabs.certify import Certifier
from crabs.config import Config
from crabs.envs import SafetySpec
from crabs.mala import Adversary
from crabs.states import uniform
from crabs.verify import adversary_search, fresh_adversary

R = 0.95   # C_h is the ball of this radius (inside the safe box [-1, 1]^d)


class BallBarrier(torch.nn.Module):
    """h(s) = 1 - |s|^2 / R^2: C_h is a ball, and h is smooth, so U has gradients to follow."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("s0", torch.zeros(dim))
        names = tuple(f"s{i}" for i in range(dim))   # the safe set [-1, 1]^d, for the audit's slabs
        self.spec = SafetySpec(state_names=names, limits=dict.fromkeys(names, 1.0), s0=(0.0,) * dim,
                               horizon=1)

    def forward(self, s):
        return 1.0 - (s ** 2).sum(-1) / R ** 2


class PlantedModel(torch.nn.Module):
    """s' = 0.5 s (C_h invariant with room to spare: U <= -0.75), except near ``centre``, where every
    member pushes coordinate 0 out. "plateau": by 3 inside the cube of half-width r around the
    centre (U > 0 exactly there, flat outside); "slope": by an amount falling linearly from the
    centre to 0 at 3r, which puts s' on C_h's edge at the cube's surface (U > 0 about the cube, and
    U rising toward it over a neighbourhood three times as wide)."""

    def __init__(self, centre: torch.Tensor, r: float, kind: str):
        super().__init__()
        self.centre, self.r, self.kind = centre, r, kind

    def means(self, s, a):
        d = ((s - self.centre).abs() / self.r).amax(-1)           # max-norm distance in units of r
        if self.kind == "plateau":
            push = (d <= 1).to(s.dtype) * 3.0
        else:
            push = (R - 0.5 * s[..., 0]) * torch.clamp((3.0 - d) / 2.0, min=0.0)
        nxt = 0.5 * s
        nxt = torch.cat([nxt[..., :1] + push[..., None], nxt[..., 1:]], -1)
        return nxt[None].expand(3, *s.shape)


class ZeroPolicy(torch.nn.Module):
    def mean_action(self, s):
        return torch.zeros(*s.shape[:-1], 1)


def planted(dim: int, frac: float, kind: str, seed: int) -> tuple[BallBarrier, PlantedModel]:
    """The certified ball and a model with a counter-example region of ``frac`` of its volume, at
    placement ``seed``."""
    h = BallBarrier(dim)
    g = torch.Generator().manual_seed(10_000 + seed)
    lo, hi = -torch.ones(dim), torch.ones(dim)
    vol = math.pi ** (dim / 2) / math.gamma(dim / 2 + 1) * R ** dim        # the ball's volume
    r = 0.5 * (frac * vol) ** (1.0 / dim)                                   # a cube of frac of it
    while True:   # a centre whose cube lies inside C_h
        centre = uniform(lo, hi, 1, g)[0]
        if float(centre.norm()) + r * math.sqrt(dim) < R:
            break
    return h, PlantedModel(centre, r, kind)


def trial(dim: int, frac: float, kind: str, cfg: Config, seed: int, gated: bool) -> bool:
    """One placement: True if certification is refused (the counter-example was found)."""
    h, model = planted(dim, frac, kind, seed)
    bc = dataclasses.replace(cfg.barrier, audit=gated)
    adv = Adversary(-np.ones(dim), np.ones(dim), cfg.mala, seed=seed)
    cert = Certifier(adv, bc, torch.Generator().manual_seed(seed + 1),
                     audit_gen=torch.Generator().manual_seed(seed + 2))
    return not cert.check(h, model, ZeroPolicy(), bc.quiet_steps)


def verify_trial(dim: int, frac: float, kind: str, cfg: Config, seed: int) -> tuple[bool, bool]:
    """``crabs verify``'s fresh adversary (its defaults: 4x the chains, 200 MALA steps, its own seed)
    on one placement: (U > 0 where the chains stand at the last step, U > 0 at any step)."""
    h, model = planted(dim, frac, kind, seed)
    adv = fresh_adversary(-np.ones(dim), np.ones(dim), cfg.mala, dim, seed=seed)
    best, _ = adversary_search(adv, h, model, ZeroPolicy(), 200)
    return adv.max_U() > 0, best > 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dims", type=int, nargs="+", default=[2, 4])
    p.add_argument("--fractions", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    p.add_argument("--kinds", nargs="+", default=["plateau", "slope"])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--chains", type=int, help="mala.chains (default: the default Config's)")
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cfg = Config()
    if args.chains:
        cfg = cfg.replace(mala={"chains": args.chains})
    print(f"# planted counter-examples: {args.trials} placements each; mala.chains "
          f"{cfg.mala.chains or 'per dim ' + str(cfg.mala.pool(1))}, "
          f"quiet_steps {cfg.barrier.quiet_steps} x 2 pools, audit_samples {cfg.barrier.audit_samples}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print(f"{'dim':>3s} {'region':>8s} {'fraction':>9s} {'adversary alone':>16s} {'gated (+ audit)':>16s} "
          f"{'s/trial':>8s} {'verify, last step':>18s} {'verify, any step':>17s}")
    for dim in args.dims:
        for kind in args.kinds:
            for frac in args.fractions:
                t0 = time.time()
                alone = sum(trial(dim, frac, kind, cfg, s, gated=False) for s in range(args.trials))
                gated = sum(trial(dim, frac, kind, cfg, s, gated=True) for s in range(args.trials))
                dt = (time.time() - t0) / (2 * args.trials)
                seen = [verify_trial(dim, frac, kind, cfg, s) for s in range(args.trials)]
                last, anystep = np.array(seen, dtype=float).mean(0)
                print(f"{dim:>3d} {kind:>8s} {frac:>9.0e} {alone / args.trials:>16.1%} "
                      f"{gated / args.trials:>16.1%} {dt:>8.2f} {last:>18.1%} {anystep:>17.1%}", flush=True)
    print(f"# load now {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
