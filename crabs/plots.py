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

from crabs.config import HANDCRAFTED  # noqa: E402
from crabs.envs import ledger_totals, read_ledger  # noqa: E402
from crabs.states import uniform  # noqa: E402


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


def run_curves(folder: str | Path) -> dict:
    """One run folder's Figure 2 data: evaluation returns and cumulative violations against its
    online environment steps. Violations come from the ledger, so none can be left out; a run that
    began with offline data (RecoveryRL, SQRL) starts its violations curve at the offline count."""
    d = Path(folder)
    led = read_ledger(d / "ledger.jsonl")
    off = ledger_totals(led, tag="offline")
    rows = [r for r in read_metrics(d / "metrics.csv") if r.get("eval_return") not in ("", None)]
    eps = [r for r in led if r.get("event") == "episode" and r.get("tag") != "offline"]
    return {"eval_x": np.array([r["env_steps"] - off.env_steps for r in rows], dtype=float),
            "eval_y": np.array([r["eval_return"] for r in rows], dtype=float),
            "viol_x": np.array([0] + [r["env_steps"] - off.env_steps for r in eps], dtype=float),
            "viol_y": np.array([off.violations] + [r["violations"] for r in eps], dtype=float),
            "offline_steps": off.env_steps, "offline_violations": off.violations}


def eval_summary(folder: str | Path, algorithm: str) -> dict:
    """The same two numbers for every algorithm, from a run folder's evaluations (metrics.csv):
    ``last_eval`` (the last evaluation of the policy being trained) and ``best_eval`` (the best
    evaluation; for CRABS and its handcrafted-h ablation only evaluations of a certified triple
    count, which is the pair CRABS delivers with ``final_policy: best``). None where the run has no
    evaluation yet."""
    rows = [r for r in read_metrics(Path(folder) / "metrics.csv") if r.get("eval_return") not in ("", None)]
    if algorithm in ("crabs", HANDCRAFTED):
        best_rows = [r for r in rows if str(r.get("policy_certified")) == "True"]
    else:
        best_rows = rows
    return {"last_eval": float(rows[-1]["eval_return"]) if rows else None,
            "best_eval": max(float(r["eval_return"]) for r in best_rows) if best_rows else None,
            "evaluations": len(rows)}


def _held(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """y of the last point at or before each grid step (a step function: a policy's evaluation and
    a violation count hold until the next one)."""
    return y[np.clip(np.searchsorted(x, grid, side="right") - 1, 0, len(y) - 1)]


def _mean_std(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean and standard deviation of several runs' step functions on the union of their steps
    (the paper: mean of four runs, one standard deviation), at each step over the runs whose curve
    covers it (a shorter or unfinished run leaves the mean to the others; the standard deviation is
    NaN where fewer than two remain, so no band is drawn there)."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return None
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    ys = np.stack([np.where((grid >= x[0]) & (grid <= x[-1]), _held(x, y, grid), np.nan)
                   for x, y in curves])
    n = np.sum(~np.isnan(ys), axis=0)
    mean = np.nansum(ys, axis=0) / np.maximum(n, 1)
    dev = np.where(np.isnan(ys), 0.0, ys - mean) ** 2
    std = np.where(n >= 2, np.sqrt(dev.sum(0) / np.maximum(n, 1)), np.nan)
    keep = n > 0
    return grid[keep], mean[keep], std[keep]


def figure2(runs: Sequence[tuple[str, str | Path]] | Sequence[tuple[str, str, str | Path]],
            out: str | Path, title: str = "") -> Path:
    """The paper's Figure 2: evaluation return (top row) and cumulative safety violations (bottom
    row) against environment steps, one column per task. ``runs`` holds (label, folder) or
    (task, label, folder); runs sharing a task and a label are one curve, the mean over them with
    one standard deviation shaded, as the paper draws four seeds. Runs with offline data (RecoveryRL,
    SQRL) are drawn against their online steps, their violations starting at the offline ones,
    which the legend also states."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        task, label, folder = run if len(run) == 3 else (title, *run)
        groups.setdefault(task, {}).setdefault(label, []).append(run_curves(folder))
    n = len(groups)
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 6.4), squeeze=False)
    colors: dict[str, str] = {}   # one colour per label across the columns
    for by_label in groups.values():
        for label in by_label:
            colors.setdefault(label, f"C{len(colors) % 10}")
    for col, (task, by_label) in enumerate(groups.items()):
        ax1, ax2 = axes[0, col], axes[1, col]
        top, any_offline = 1.0, False
        for label, cs in by_label.items():
            color = colors[label]
            off = [c for c in cs if c["offline_steps"]]
            name = label if len(cs) == 1 else f"{label} ({len(cs)} runs)"
            if off:
                any_offline = True
                name += (f" (+{np.mean([c['offline_violations'] for c in off]):.0f} in "
                         f"{off[0]['offline_steps']} offline steps)")
            for ax, key, step in ((ax1, "eval", False), (ax2, "viol", True)):
                ms = _mean_std([(c[f"{key}_x"], c[f"{key}_y"]) for c in cs])
                if ms is None:
                    continue
                grid, mean, std = ms
                marker = "o" if len(grid) == 1 else None   # a lone point would not show as a line
                if step:
                    ax.step(grid, mean, where="post", color=color, label=name, marker=marker)
                    top = max(top, float(np.nanmax(mean + np.nan_to_num(std))))
                else:
                    ax.plot(grid, mean, color=color, label=name, marker=marker)
                if len(cs) > 1:
                    ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2,
                                    step="post" if step else None, linewidth=0)
        if top > 100:   # counts from 0 to thousands: a linear axis would flatten the small ones
            ax2.set_yscale("symlog", linthresh=10)
            ax2.set_ylim(-0.5, 2 * top)
        else:
            ax2.set_ylim(-0.05 * top, 1.1 * top)
        ax1.set(ylabel="return (mean policy)", title=task)
        ax2.set(ylabel="cumulative violations",
                xlabel="environment steps" + (" (online; offline violations at 0)" if any_offline else ""))
        ax2.legend(fontsize=7, loc="best")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
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
    free = uniform(lo, hi, n_free, g)
    best = np.full(X.size, -np.inf)
    grid = torch.as_tensor(np.stack([X, Y], -1).reshape(-1, 2), dtype=torch.float32)
    for chunk in torch.split(torch.arange(len(grid)), 400):
        s = free[None].repeat(len(chunk), 1, 1)
        s[..., dims[0]] = grid[chunk, 0, None]
        s[..., dims[1]] = grid[chunk, 1, None]
        best[chunk.numpy()] = h(s).amax(1).numpy()
    return xs, ys, best.reshape(n_grid, n_grid)


def _plane(spec) -> tuple[int, int]:
    """The two coordinates Figure 3 projects on: the 2-D state, else the first two constrained ones
    (the paper's [x, theta] for the cart-poles)."""
    if spec.dim == 2:
        return (0, 1)
    idx = list(spec.constrained_index)
    dims = (idx[0], idx[1]) if len(idx) >= 2 else (idx[0], (idx[0] + 1) % spec.dim)
    return tuple(sorted(dims))


def _draw_c_h(ax, h, spec, low, high, trajectory, kernel, dims, legend: bool = True) -> None:
    """One panel of Figure 3: C_h's projection (red), the trajectory (green), the safe limits and,
    for the pendulum tasks, the oracle's viability kernel underneath."""
    xs, ys, v = projected_certified(h, low, high, dims)
    if kernel is not None:
        ax.contourf(kernel.theta, kernel.theta_dot, kernel.mask.T.astype(float), levels=[0.5, 1.5],
                    colors=["#cfe8cf"])
        ax.contour(kernel.theta, kernel.theta_dot, kernel.mask.T.astype(float), levels=[0.5],
                   colors=["#4a8a4a"], linewidths=0.8)
        ax.plot([], [], color="#4a8a4a", label="viability kernel (oracle)")
    if np.nanmax(v) >= 0:   # an empty C_h has no zero level to draw
        ax.contour(xs, ys, v.T, levels=[0.0], colors=["red"], linewidths=1.5)
    ax.plot([], [], color="red", label="certified set C_h")
    if trajectory is not None and len(trajectory):
        tr = np.asarray(trajectory)
        ax.plot(tr[:, dims[0]], tr[:, dims[1]], ".", color="green", ms=2.5, label="policy trajectory")
    for i, name in zip(dims, ("x", "y")):
        nm = spec.state_names[i]
        if nm in spec.limits:
            lim = spec.limits[nm]
            line = ax.axvline if name == "x" else ax.axhline
            line(lim, color="k", ls="--", lw=0.8)
            line(-lim, color="k", ls="--", lw=0.8)
    ax.set(xlabel=spec.state_names[dims[0]], ylabel=spec.state_names[dims[1]],
           xlim=(low[dims[0]], high[dims[0]]), ylim=(low[dims[1]], high[dims[1]]))
    if legend:
        ax.legend(fontsize=7, loc="upper right")


def figure3(h, spec, low, high, trajectory: np.ndarray | None, out: str | Path, title: str = "",
            kernel=None) -> Path:
    """C_h projected on the constrained coordinates (or the 2-D state), with the policy's
    trajectory; ``kernel`` (oracle.ViabilityKernel) is drawn underneath for 2-D pendulum tasks."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    _draw_c_h(ax, h, spec, low, high, trajectory, kernel, _plane(spec))
    if title:
        ax.set_title(title)
    return _save(fig, out)


def figure3_epochs(h, history: Sequence[dict], spec, low, high, out: str | Path, title: str = "",
                   kernel=None, panels: int = 4) -> Path:
    """The paper's Figure 3, C_h growing over the epochs: ``panels`` snapshots spread over
    ``history`` (the run's per-epoch records, ``{"epoch", "h", "trajectory"}``, start-up first),
    each h loaded into a copy of ``h`` and drawn as :func:`figure3` draws one, with the trajectory
    of that epoch's evaluation."""
    import copy

    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if not history:
        raise ValueError("figure3_epochs needs at least one recorded epoch")
    picks = sorted({int(round(x)) for x in np.linspace(0, len(history) - 1, min(panels, len(history)))})
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 3.9), squeeze=False)
    hk = copy.deepcopy(h)
    dims = _plane(spec)
    for k, (ax, i) in enumerate(zip(axes[0], picks)):
        rec = history[i]
        hk.load_state_dict(rec["h"])
        traj = rec.get("trajectory")
        traj = None if traj is None else np.asarray(traj)
        with torch.no_grad():
            _draw_c_h(ax, hk.eval(), spec, low, high, traj, kernel, dims, legend=k == 0)
        n = rec["epoch"]
        ax.set_title("start-up" if n == 0 else f"after {n} epoch{'s' if n > 1 else ''}", fontsize=10)
    if title:
        fig.suptitle(title)
    return _save(fig, out)
