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


EDGE_WIDTH = 0.05
"""The slabs next to each safety limit that the audits also sample (a fraction of the limit)."""


@torch.no_grad()
def edge_states(h, box: tuple[torch.Tensor, torch.Tensor], spec, n: int, width: float,
                gen: torch.Generator | None) -> torch.Tensor:
    """Up to about n states uniform in C_h's slabs next to the safety limits: for each constrained
    coordinate i and each side, the states of ``box`` whose |s_i| lies within ``width`` x its limit
    inside where h's B_safe term cuts (the limit, less h's edge pad if it has one); n is split
    evenly over the slabs, and fewer come where C_h barely reaches one. B_safe rises from 0 to 1
    across the last 1% of each (padded) limit, so C_h's edge there is a cliff, and a state just
    inside it moving out can be certified while its next state falls deep outside: a sliver far
    too thin for uniform samples of all of C_h to find."""
    lo, hi = box
    if n <= 0:
        return torch.zeros(0, len(lo))
    pad = getattr(h, "pad", None)
    pads = pad.tolist() if isinstance(pad, torch.Tensor) else [0.0] * len(spec.constrained_index)
    slabs = []
    for i, z, p in zip(spec.constrained_index.tolist(), spec.constrained_max.tolist(), pads):
        edge = z * (1 - p)
        for a, b in ((-edge, -edge + width * z), (edge - width * z, edge)):
            l2, h2 = lo.clone(), hi.clone()
            l2[i], h2[i] = max(float(lo[i]), a), min(float(hi[i]), b)
            if l2[i] < h2[i]:
                slabs.append((l2, h2))
    if not slabs:
        return torch.zeros(0, len(lo))
    per = max(1, n // len(slabs))
    return torch.cat([certified_states(h, slab, per, gen) for slab in slabs])


@torch.no_grad()
def rollout_states(h, model, policy, starts: torch.Tensor, steps: int, settled: float = 1e-6) -> torch.Tensor:
    """The states of C_h that the mean policy visits in up to ``steps`` steps of the ensemble's mean
    prediction from each start (the closed loop under the model; a trajectory is followed until it
    leaves C_h). Where the closed loop creeps out of C_h it crosses C_h's edge in a strip that can
    be far too thin for uniform samples of C_h, and where every trajectory from a basin goes, the
    rollouts go too. A trajectory that has come to rest (no coordinate moved more than ``settled``
    in a step) is not followed further: it would only visit the same state again."""
    visited, s = [], starts
    for _ in range(steps):
        if len(s) == 0:
            break
        s2 = model.means(s, policy.mean_action(s)).mean(0)
        keep = torch.isfinite(s2).all(-1)
        s, s2 = s[keep], s2[keep]
        keep = h(s2) >= 0
        s, s2 = s[keep], s2[keep]
        visited.append(s2)
        s = s2[(s2 - s).abs().amax(-1) > settled]   # at rest: its next states are this one again
    return torch.cat(visited) if visited else starts[:0]
