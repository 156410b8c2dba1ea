"""States of the system's box and of the certified set C_h = {s : h(s) >= 0}: uniform samples, the
certified set's bounding box, rejection samples of C_h and its volume. Shared by the co-training
loop, the adversary (mala.py), the audit (certify.py) and ``crabs verify``.
"""

from __future__ import annotations

import torch


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
def certified_states(h, box: tuple[torch.Tensor, torch.Tensor], n: int, gen: torch.Generator | None,
                     tries: int = 50) -> torch.Tensor:
    """n states uniform in C_h (fewer if C_h is too small a part of ``box`` to find n in ``tries``
    rounds of n uniform states of the box): rejection sampling until n are certified."""
    pts, k = [], 0
    for _ in range(tries):
        pts.append(certified_samples(h, box, n, gen))
        k += len(pts[-1])
        if k >= n:
            break
    return torch.cat(pts)[:n]
