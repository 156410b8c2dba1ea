"""The paper's pictures: Figure 2 (return and cumulative violations against environment steps) and
Figure 3 (the certified set C_h projected on the constrained coordinates, with the policy's
trajectory; for the pendulum tasks drawn over the true viability kernel)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from crabs.envs import ledger_totals, read_ledger  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            try:
                d[k] = float(v)
            except (TypeError, ValueError):
                d[k] = v
        out.append(d)
    return out


def figure2(runs: Sequence[tuple[str, str | Path]], out: str | Path, title: str = "") -> Path:
    """Return of the evaluated policy and cumulative violations against environment steps, one line
    per run folder (label, folder). Violations come from the ledger, so none can be left out. A run
    that began with offline data (RecoveryRL, SQRL) is drawn against its online steps, its
    violations curve starting at the offline ones, which the legend also states."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    top, any_offline = 1, False
    for label, d in runs:
        d = Path(d)
        led = read_ledger(d / "ledger.jsonl")
        off = ledger_totals(led, tag="offline")
        off_steps, off_viol = off.env_steps, off.violations
        if off_steps:
            any_offline = True
            label = f"{label} (+{off_viol} violations in {off_steps} offline steps)"
        rows = [r for r in read_metrics(d / "metrics.csv") if r.get("eval_return") not in ("", None)]
        if rows:
            ax1.plot([r["env_steps"] - off_steps for r in rows], [r["eval_return"] for r in rows],
                     label=label)
        eps = [r for r in led if r.get("event") == "episode" and r.get("tag") != "offline"]
        xs = [0] + [r["env_steps"] - off_steps for r in eps]
        ys = [off_viol] + [r["violations"] for r in eps]
        ax2.step(xs, ys, where="post", label=label)
        top = max(top, ys[-1])
    xlabel = "environment steps" + (" (online; offline violations counted at 0)" if any_offline else "")
    ax1.set(xlabel=xlabel, ylabel="return (mean policy)", title="return")
    ax2.set(xlabel=xlabel, ylabel="cumulative violations", title="safety violations")
    if top > 100:   # counts from 0 to thousands: a linear axis would flatten the small ones
        ax2.set_yscale("symlog", linthresh=10)
        ax2.set_ylim(-0.5, 2 * top)
    else:
        ax2.set_ylim(-0.05 * top, 1.1 * top)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    """Lay out, write (120 dpi) and close a figure."""
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@torch.no_grad()
def projected_certified(h, low: np.ndarray, high: np.ndarray, dims: tuple[int, int], n_grid: int = 80,
                        n_free: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """max over the other coordinates (sampled) of h, on a grid of the two ``dims``: its zero level
    is the projection of C_h."""
    g = torch.Generator().manual_seed(seed)
    xs = np.linspace(low[dims[0]], high[dims[0]], n_grid)
    ys = np.linspace(low[dims[1]], high[dims[1]], n_grid)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    d = len(low)
    lo, hi = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    if d == 2:
        s = torch.as_tensor(np.stack([X, Y], -1).reshape(-1, 2), dtype=torch.float32)
        return xs, ys, h(s).reshape(n_grid, n_grid).numpy()
    free = lo + (hi - lo) * torch.rand(n_free, d, generator=g)
    best = np.full(X.size, -np.inf)
    grid = torch.as_tensor(np.stack([X, Y], -1).reshape(-1, 2), dtype=torch.float32)
    for chunk in torch.split(torch.arange(len(grid)), 400):
        s = free[None].repeat(len(chunk), 1, 1)
        s[..., dims[0]] = grid[chunk, 0, None]
        s[..., dims[1]] = grid[chunk, 1, None]
        best[chunk.numpy()] = h(s).amax(1).numpy()
    return xs, ys, best.reshape(n_grid, n_grid)


def figure3(h, spec, low, high, trajectory: np.ndarray | None, out: str | Path, title: str = "",
            kernel=None) -> Path:
    """C_h projected on the constrained coordinates (or the 2-D state), with the policy's
    trajectory; ``kernel`` (oracle.ViabilityKernel) is drawn underneath for 2-D pendulum tasks."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if spec.dim == 2:
        dims = (0, 1)
    else:
        idx = list(spec.constrained_index)
        dims = (idx[0], idx[1]) if len(idx) >= 2 else (idx[0], (idx[0] + 1) % spec.dim)
        dims = tuple(sorted(dims))
    xs, ys, v = projected_certified(h, low, high, dims)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    if kernel is not None:
        ax.contourf(kernel.theta, kernel.theta_dot, kernel.mask.T.astype(float), levels=[0.5, 1.5],
                    colors=["#cfe8cf"])
        ax.contour(kernel.theta, kernel.theta_dot, kernel.mask.T.astype(float), levels=[0.5],
                   colors=["#4a8a4a"], linewidths=0.8)
        ax.plot([], [], color="#4a8a4a", label="viability kernel (oracle)")
    ax.contour(xs, ys, v.T, levels=[0.0], colors=["red"], linewidths=1.5)
    ax.plot([], [], color="red", label="certified set C_h")
    if trajectory is not None and len(trajectory):
        tr = np.asarray(trajectory)
        ax.plot(tr[:, dims[0]], tr[:, dims[1]], ".", color="green", ms=2.5, label="policy trajectory")
    for i, name in zip(dims, ("x", "y")):
        nm = spec.state_names[i]
        if nm in spec.limits:
            lim = spec.limits[nm]
            if name == "x":
                ax.axvline(lim, color="k", ls="--", lw=0.8)
                ax.axvline(-lim, color="k", ls="--", lw=0.8)
            else:
                ax.axhline(lim, color="k", ls="--", lw=0.8)
                ax.axhline(-lim, color="k", ls="--", lw=0.8)
    ax.set(xlabel=spec.state_names[dims[0]], ylabel=spec.state_names[dims[1]],
           xlim=(low[dims[0]], high[dims[0]]), ylim=(low[dims[1]], high[dims[1]]))
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title)
    return _save(fig, out)
