"""States of the system's box and of the certified set C_h = {s : h(s) >= 0}: uniform samples, the
certified set's bounding box, rejection samples of C_h, its volume, and the uniform audit of R.3
under the model. Shared by the co-training loop, the adversary (mala.py) and ``crabs verify``.
"""

from __future__ import annotations

import torch

from crabs.barrier import U


def uniform(low: torch.Tensor, high: torch.Tensor, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """n states uniform in the box [low, high]."""
    return low + (high - low) * torch.rand(n, len(low), generator=gen)


@torch.no_grad()
def volume_on(h, s: torch.Tensor) -> float:
    """Fraction of the states s that h certifies (h >= 0)."""
    return float((h(s) >= 0).float().mean())


@torch.no_grad()
def certified_box(h, low: torch.Tensor, high: torch.Tensor, n: int, scale: float,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding box of the certified states among n uniform states of [low, high], scaled by
    ``scale`` about its centre and clipped to [low, high]; a small box around s0 if none is
    certified."""
    s = uniform(low, high, n, gen)
    ins = s[h(s) >= 0]
    if len(ins) == 0:
        half = (high - low) / 2
        return h.s0 - 0.05 * half, h.s0 + 0.05 * half
    lo, hi = ins.min(0).values, ins.max(0).values
    c, r = (lo + hi) / 2, (hi - lo) / 2 * scale
    return torch.maximum(c - r, low), torch.minimum(c + r, high)


@torch.no_grad()
def certified_samples(h, box: tuple[torch.Tensor, torch.Tensor], n: int,
                      gen: torch.Generator | None) -> torch.Tensor:
    """Uniform samples of C_h: the certified ones of n uniform states of ``box`` (rejection)."""
    s = uniform(*box, n, gen)
    return s[h(s) >= 0]


@torch.no_grad()
def uniform_violations(h, model, policy, inside: torch.Tensor) -> float:
    """An audit of the adversary: the fraction of the uniform certified states ``inside`` where
    U(s, pi(s), h) > 0 under the model, i.e. where the certificate is not invariant for the model.
    Alg. 1 should leave this at 0; MALA with few chains can miss whole regions, which this exposes
    (in 2-D or 4-D uniform sampling is dense enough)."""
    if len(inside) == 0:
        return 0.0
    return float((U(h, model, inside, policy.mean_action(inside)) > 0).float().mean())
