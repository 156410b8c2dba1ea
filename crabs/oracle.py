"""Ground truth for the two 2-D pendulum tasks, Upright and Tilt (Sec. 5 (a), (b)).

Two things are computed on the true dynamics :func:`crabs.envs.pendulum.pendulum_step`:

1. **The viability kernel** (Definition 1 of the paper): the states from which some admissible
   action sequence (``a_t`` in [-1, 1]) keeps ``|theta| <= 1.5`` forever.

   It is computed *exactly* (no interpolation error) thanks to a property of this system: on
   ``|theta| <= 1.5 < pi/2`` the one-step map is monotone (componentwise non-decreasing in
   ``theta``, ``theta_dot`` and ``a``, clipping included). Hence

   * ``N`` (never falls to ``theta < -1.5``) is decided by the constant action ``a = +1``, which
     dominates every other action sequence: ``s`` is in ``N`` iff the ``a = +1`` trajectory
     reaches ``{theta >= theta_lim, theta_dot >= 0}`` (from which it never comes back) or
     converges to the saddle ``(theta_lim, 0)`` without ever going below ``-1.5``;
   * ``P`` (never rises above ``+1.5``) likewise with ``a = -1`` (the mirror image of ``N``);
   * ``N`` is an up-set and ``P`` a down-set, so each column ``theta = const`` of the kernel is an
     interval ``lower(theta) <= theta_dot <= upper(theta)``, found by bisection on ``theta_dot``;
   * the kernel is ``N & P``: for ``s`` in ``N & P`` the actions keeping the successor in ``N``
     form an interval ``[a_N, 1]`` and those keeping it in ``P`` an interval ``[-1, a_P]``; the two
     overlap because no successor of a safe state lies outside both ``N`` and ``P``
     (checked numerically by the tests, together with the invariance itself).

   :func:`value_iteration_kernel` gives the textbook alternative (value iteration on the margin
   ``V(s) = max_a min(1.5 - |theta|, V(f(s, a)))`` with bilinear interpolation) as a cross-check:
   it over-approximates the kernel by O(grid step) and converges to the same set
   (area fraction 0.241 at 201 x 321 nodes, 0.227 at 601 x 961, exact 0.221).

2. **The best safe return from s0** over the 200-step horizon (reward of the state each step
   starts from, so ``r(s0)`` counts and ``r(s_200)`` does not; ``|theta| <= 1.5`` throughout), by

   * ``"dp"``: finite-horizon DP on the grid nodes inside the kernel, ``J_t(s) = r(s) + max_a
     J_{t+1}(f(s, a))`` over actions whose successor is in the kernel, ``J_{t+1}`` interpolated
     among *viable* neighbours only; the reported figure is the return of the DP's greedy policy
     simulated on the true continuous dynamics (fine action grid, successors checked with the
     exact kernel test), an achievable lower bound;
   * ``"search"``: coarse grid, cross-entropy method and pattern-search polish over saturated PD
     controllers with a target angle,
     ``a = clip((k1 (theta_ref - theta) - k2 theta_dot - 15 sin(theta_ref)) / 6, -1, 1)``, simulated on the
     true dynamics; only trajectories safe for all 200 steps count.

Measured with the defaults (301 x 481 nodes, 21 DP actions): kernel area fraction 0.2210;
Upright -0.2160 (dp) / -0.2160 (search); Tilt -2.334 (dp) / -2.327 (search); ``report`` takes
2-4 s per task on 2 slow cores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp

from crabs.envs import get_task
from crabs.envs.pendulum import HORIZON, MAX_SPEED, S0, THETA_LIM, THETA_MAX, pendulum_step

__all__ = ["PENDULUM_TASKS", "ViabilityKernel", "OracleResult", "is_viable", "kernel_boundary",
           "viability_kernel", "value_iteration_kernel", "kernel_keeping_action", "best_return",
           "search_controller", "pd_action", "report"]

PENDULUM_TASKS = ("upright", "tilt")
N_THETA, N_THETA_DOT = 301, 481  # default grid: steps 0.01 rad and 1/30 rad/s
N_ACTIONS = 21  # DP actions, -1 .. 1 in steps of 0.1
N_FINE = 201  # actions tried by the simulated greedy policies, steps of 0.01
MAX_DECIDE_STEPS = 3000  # exact kernel test: steps simulated before a state is called undecided
_GRAVITY = 15.0  # theta_ddot = 15 sin(theta) + 6 a
_TORQUE = 6.0


def _check_task(task: str) -> str:
    name = str(task).lower()
    if name not in PENDULUM_TASKS:
        raise ValueError(f"the oracle covers the 2-D pendulum tasks only ({', '.join(PENDULUM_TASKS)});"
                         f" got {task!r}")
    return get_task(name).name


def _as_states(states: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    s = np.asarray(states, dtype=np.float64)
    if s.shape[-1] != 2:
        raise ValueError(f"pendulum states have 2 coordinates (theta, theta_dot), got shape {s.shape}")
    return s.reshape(-1, 2), s.shape[:-1]


# ------------------------------------------------------------------ exact viability kernel

def _one_sided(states: np.ndarray, side: int, max_steps: int = MAX_DECIDE_STEPS) -> np.ndarray:
    """Membership of N (side=+1: the a=+1 trajectory never has theta < -1.5) or of P (side=-1,
    the mirror image), decided by simulation on the true dynamics; states still undecided after
    ``max_steps`` (numerically on the saddle's stable manifold) count as members."""
    cur = np.asarray(states, dtype=np.float64).reshape(-1, 2) * side  # P(s) == N(-s) by symmetry
    out = np.zeros(len(cur), dtype=bool)
    active = np.arange(len(cur))
    for _ in range(max_steps + 1):
        th, thdot = cur[:, 0], cur[:, 1]
        fell = ~(th >= -THETA_MAX)  # NaN counts as fallen
        home = (th >= THETA_LIM) & (thdot >= 0.0)  # invariant under a=+1, never below theta_lim
        out[active[home & ~fell]] = True
        keep = ~(fell | home)
        active, cur = active[keep], cur[keep]
        if active.size == 0:
            return out
        cur = pendulum_step(cur, np.ones(len(cur)))
    out[active] = True
    return out


def is_viable(states: np.ndarray, max_steps: int = MAX_DECIDE_STEPS) -> np.ndarray:
    """Exact membership of the viability kernel (Definition 1) for arbitrary states (..., 2):
    True iff some action sequence keeps ``|theta| <= 1.5`` forever (see the module docstring).
    Works for any state, including ``|theta_dot| > 8``."""
    s, shape = _as_states(states)
    safe = np.abs(s[:, 0]) <= THETA_MAX
    out = np.zeros(len(s), dtype=bool)
    idx = np.flatnonzero(safe)
    if idx.size:
        out[idx] = _one_sided(s[idx], +1, max_steps) & _one_sided(s[idx], -1, max_steps)
    return out.reshape(shape)


def kernel_boundary(theta: np.ndarray, iters: int = 52) -> tuple[np.ndarray, np.ndarray]:
    """Exact kernel column bounds: the kernel's slice at angle ``theta`` is
    ``lower(theta) <= theta_dot <= upper(theta)`` within [-8, 8] (bisection to ~1e-15 rad/s).
    ``lower`` is -8 where the whole column is in N, +inf where none of it is (``upper`` likewise)."""
    theta = np.asarray(theta, dtype=np.float64).ravel()
    bounds = []
    for side in (+1, -1):  # N: up-interval in theta_dot; P: down-interval = mirror of N
        th = side * theta
        lo = np.full(th.shape, -MAX_SPEED)
        hi = np.full(th.shape, MAX_SPEED)
        lo_in = _one_sided(np.stack([th, lo], -1), +1)
        hi_in = _one_sided(np.stack([th, hi], -1), +1)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            member = _one_sided(np.stack([th, mid], -1), +1)
            hi = np.where(member, mid, hi)
            lo = np.where(member, lo, mid)
        edge = np.where(lo_in, -MAX_SPEED, np.where(hi_in, hi, np.inf))
        bounds.append(side * edge)
    return bounds[0], bounds[1]


@dataclass(frozen=True, eq=False)
class ViabilityKernel:
    """The viability kernel (Definition 1) of the pendulum on the grid ``theta x theta_dot``
    (``|theta| <= 1.5``, ``|theta_dot| <= 8``).

    ``value[i, j]`` is a margin whose zero super-level set is the kernel: for the exact kernel
    (``method="exact"``) the signed speed distance to the kernel's boundary along ``theta_dot``,
    ``min(theta_dot - lower(theta), upper(theta) - theta_dot)`` in rad/s (clipped to +-16); for
    ``method="value_iteration"`` the interpolated VI margin in rad. ``mask = value >= 0``.
    ``fraction`` is the kernel's share of the box's area (exact: integral of the column widths;
    VI: share of grid nodes). Draw it with ``contour(k.theta, k.theta_dot, k.value.T, [0])``.
    """

    theta: np.ndarray
    theta_dot: np.ndarray
    value: np.ndarray
    mask: np.ndarray
    fraction: float
    method: str = "exact"
    lower: np.ndarray | None = field(default=None, repr=False)
    upper: np.ndarray | None = field(default=None, repr=False)

    @property
    def grid_fraction(self) -> float:
        """Share of grid nodes inside the kernel."""
        return float(self.mask.mean())

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def margin(self, states: np.ndarray) -> np.ndarray:
        """Bilinearly interpolated margin at states (..., 2); -inf outside the grid's box."""
        s, shape = _as_states(states)
        idx, w = _bilinear(self.theta, self.theta_dot, s)
        m = (self.value.ravel()[idx] * w).sum(0)
        inside = (np.abs(s[:, 0]) <= THETA_MAX) & (np.abs(s[:, 1]) <= MAX_SPEED)
        return np.where(inside, m, -np.inf).reshape(shape)

    def contains(self, states: np.ndarray) -> np.ndarray:
        """Interpolated margin >= 0 at states (..., 2) (False outside the grid's box). For the
        exact kernel this errs only within O(grid step^2) of the boundary; :func:`is_viable` is
        the exact test."""
        return self.margin(states) >= 0.0


def _grid(n_theta: int, n_theta_dot: int) -> tuple[np.ndarray, np.ndarray]:
    if n_theta < 3 or n_theta_dot < 3:
        raise ValueError(f"grid needs at least 3 x 3 nodes, got {n_theta} x {n_theta_dot}")
    return (np.linspace(-THETA_MAX, THETA_MAX, int(n_theta)),
            np.linspace(-MAX_SPEED, MAX_SPEED, int(n_theta_dot)))


def _bilinear(theta: np.ndarray, theta_dot: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (4, n) into a (len(theta), len(theta_dot)) array and bilinear weights (4, n)
    for points s (n, 2), clamped to the grid."""
    nx, ny = len(theta), len(theta_dot)
    fx = (np.clip(s[:, 0], theta[0], theta[-1]) - theta[0]) / (theta[1] - theta[0])
    fy = (np.clip(s[:, 1], theta_dot[0], theta_dot[-1]) - theta_dot[0]) / (theta_dot[1] - theta_dot[0])
    i0 = np.clip(np.floor(fx).astype(np.int64), 0, nx - 2)
    j0 = np.clip(np.floor(fy).astype(np.int64), 0, ny - 2)
    tx, ty = fx - i0, fy - j0
    base = i0 * ny + j0
    idx = np.stack([base, base + ny, base + 1, base + ny + 1])
    w = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty])
    return idx, w


@lru_cache(maxsize=8)
def viability_kernel(n_theta: int = N_THETA, n_theta_dot: int = N_THETA_DOT) -> ViabilityKernel:
    """The exact viability kernel (Definition 1) sampled on an ``n_theta x n_theta_dot`` grid
    (cached per grid: Upright and Tilt share it). About 0.5 s at the default grid."""
    theta, theta_dot = _grid(n_theta, n_theta_dot)
    lower, upper = kernel_boundary(theta)
    with np.errstate(invalid="ignore"):
        value = np.minimum(theta_dot[None, :] - lower[:, None], upper[:, None] - theta_dot[None, :])
    value = np.clip(np.nan_to_num(value, nan=-2 * MAX_SPEED), -2 * MAX_SPEED, 2 * MAX_SPEED)
    width = np.clip(np.clip(upper, -MAX_SPEED, MAX_SPEED) - np.clip(lower, -MAX_SPEED, MAX_SPEED), 0, None)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    fraction = float(trapezoid(width, theta) / (2 * THETA_MAX * 2 * MAX_SPEED))
    for a in (theta, theta_dot, value, lower, upper):
        a.setflags(write=False)
    mask = value >= 0
    mask.setflags(write=False)
    return ViabilityKernel(theta, theta_dot, value, mask, fraction, "exact", lower, upper)


@lru_cache(maxsize=4)
def value_iteration_kernel(n_theta: int = 201, n_theta_dot: int = 321, n_actions: int = N_ACTIONS,
                           tol: float = 1e-9, max_iter: int = 10_000) -> ViabilityKernel:
    """Viability kernel by value iteration on the margin (cross-check of the exact kernel):
    ``V(s) = max_a min(g(s), V(f(s, a)))``, ``g = 1.5 - |theta|``, V interpolated bilinearly,
    actions ``linspace(-1, 1, n_actions)``, iterated from ``V = g`` to a fixed point (sup-norm
    change < tol); kernel ``{V >= 0}``. Successors with ``|theta| > 1.5`` get ``V = g < 0``;
    clipping keeps ``|theta_dot| <= 8``, so none leaves the grid's speed range. Interpolation
    makes it over-approximate the kernel by O(grid step). About 2 s at the default grid."""
    theta, theta_dot = _grid(n_theta, n_theta_dot)
    if n_actions < 2:
        raise ValueError("need at least the two extreme actions")
    states = np.stack(np.meshgrid(theta, theta_dot, indexing="ij"), -1).reshape(-1, 2)
    n = len(states)
    acts = np.linspace(-1.0, 1.0, int(n_actions))
    nxt = pendulum_step(states[None], np.broadcast_to(acts[:, None], (len(acts), n))).reshape(-1, 2)
    inside = np.abs(nxt[:, 0]) <= THETA_MAX
    idx, w = _bilinear(theta, theta_dot, nxt)
    rows = np.broadcast_to(np.arange(len(nxt)), idx.shape)
    keep = np.broadcast_to(inside, idx.shape)
    M = sp.csr_matrix((w[keep], (rows[keep], idx[keep])), shape=(len(nxt), n))
    c = np.where(inside, 0.0, THETA_MAX - np.abs(nxt[:, 0]))
    g = THETA_MAX - np.abs(states[:, 0])
    V = g.copy()
    for _ in range(int(max_iter)):
        V_new = np.minimum(g, (M @ V + c).reshape(len(acts), n).max(0))
        change = float(np.abs(V_new - V).max())
        V = V_new
        if change < tol:
            break
    value = V.reshape(len(theta), len(theta_dot))
    mask = value >= 0
    for a in (theta, theta_dot, value, mask):
        a.setflags(write=False)
    return ViabilityKernel(theta, theta_dot, value, mask, float(mask.mean()), "value_iteration")


def kernel_keeping_action(kernel: ViabilityKernel, states: np.ndarray, n_actions: int = 41) -> np.ndarray:
    """The action (among ``linspace(-1, 1, n_actions)``) whose successor has the largest
    interpolated kernel margin: the greedy kernel-keeping controller, for states (..., 2)."""
    s, shape = _as_states(states)
    acts = np.linspace(-1.0, 1.0, int(n_actions))
    nxt = pendulum_step(s[:, None, :], np.broadcast_to(acts, (len(s), len(acts))))
    m = kernel.margin(nxt.reshape(-1, 2)).reshape(len(s), len(acts))
    return acts[np.argmax(m, axis=1)].reshape(shape)


# ------------------------------------------------------------------ best safe return

@dataclass(frozen=True, eq=False)
class OracleResult:
    """A best safe return from s0: ``value = sum_{t<200} r(states[t])``, the trajectory
    ``states`` (201, 2) on the true dynamics and its ``actions`` (200,); ``safe`` is True iff
    every state has ``|theta| <= 1.5``; ``ends_viable`` iff the last state is in the kernel
    (exact test). ``details`` holds method-specific figures (DP grid value, controller gains)."""

    task: str
    method: str
    value: float
    states: np.ndarray
    actions: np.ndarray
    safe: bool
    ends_viable: bool
    details: dict[str, Any] = field(default_factory=dict)


def _reward(task: str):
    return get_task(task).reward


def _result(task: str, method: str, states: np.ndarray, actions: np.ndarray,
            details: dict[str, Any]) -> OracleResult:
    spec = get_task(task).spec
    value = float(np.sum(_reward(task)(states[:-1])))
    safe = bool(np.all(spec.is_safe(states)))
    ends = bool(is_viable(states[-1]))
    return OracleResult(task, method, value, states, actions, safe, ends, details)


class _ViableInterpolator:
    """Bilinear interpolation of a function stored on the kernel's viable nodes only: the weights
    of non-viable neighbours are dropped and the rest renormalised."""

    def __init__(self, kernel: ViabilityKernel):
        self.kernel = kernel
        self.nodes = np.flatnonzero(kernel.mask.ravel())
        self.lin = np.full(kernel.mask.size, -1, dtype=np.int64)
        self.lin[self.nodes] = np.arange(len(self.nodes))

    def states(self) -> np.ndarray:
        i, j = np.unravel_index(self.nodes, self.kernel.shape)
        return np.stack([self.kernel.theta[i], self.kernel.theta_dot[j]], -1)

    def matrix(self, points: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """(n, n_viable) interpolation matrix and whether each point has a viable neighbour."""
        idx, w = _bilinear(self.kernel.theta, self.kernel.theta_dot, points)
        col = self.lin[idx]
        w = np.where(col >= 0, w, 0.0)
        tot = w.sum(0)
        ok = tot > 1e-12
        w = w / np.where(ok, tot, 1.0)
        keep = w > 0
        rows = np.broadcast_to(np.arange(len(points)), idx.shape)
        M = sp.csr_matrix((w[keep], (rows[keep], col[keep])), shape=(len(points), len(self.nodes)))
        return M, ok


def _dp_best_return(task: str, n_theta: int, n_theta_dot: int, n_actions: int,
                    n_fine: int) -> OracleResult:
    kernel = viability_kernel(n_theta, n_theta_dot)
    interp = _ViableInterpolator(kernel)
    S = interp.states()
    n = len(S)
    acts = np.linspace(-1.0, 1.0, int(n_actions))
    nxt = pendulum_step(S[None], np.broadcast_to(acts[:, None], (len(acts), n))).reshape(-1, 2)
    M, ok = interp.matrix(nxt)
    feasible = (ok & kernel.contains(nxt)).reshape(len(acts), n)
    r = _reward(task)(S)
    J = np.zeros((HORIZON + 1, n))
    for t in range(HORIZON - 1, -1, -1):
        q = (M @ J[t + 1]).reshape(len(acts), n)
        q[~feasible] = -np.inf
        J[t] = r + q.max(0)
    M0, ok0 = interp.matrix(np.asarray([S0]))
    grid_value = float((M0 @ J[0])[0]) if ok0[0] else float("-inf")

    # the DP's greedy policy on the true dynamics; successors checked with the exact kernel test
    fine = np.linspace(-1.0, 1.0, int(n_fine))
    s = np.asarray(S0, dtype=np.float64)
    states, actions, fallbacks = [s], [], 0
    for t in range(HORIZON):
        cand = pendulum_step(np.broadcast_to(s, (len(fine), 2)), fine)
        Mc, okc = interp.matrix(cand)
        q = Mc @ J[t + 1]
        good = okc & is_viable(cand)
        if good.any():
            k = int(np.argmax(np.where(good, q, -np.inf)))
        else:  # cannot happen from a viable state; keep the largest margin and let `safe` tell
            fallbacks += 1
            k = int(np.argmax(kernel.margin(cand)))
        s = cand[k]
        states.append(s)
        actions.append(fine[k])
    details = {"grid_value": grid_value, "grid": [int(n_theta), int(n_theta_dot)],
               "n_actions": int(n_actions), "n_fine_actions": int(n_fine), "fallbacks": fallbacks}
    return _result(task, "dp", np.asarray(states), np.asarray(actions), details)


def pd_action(states: np.ndarray, k1: np.ndarray | float, k2: np.ndarray | float,
              theta_ref: np.ndarray | float) -> np.ndarray:
    """Saturated PD with gravity feed-forward, the controller family of ``method="search"``:
    ``a = clip((k1 (theta_ref - theta) - k2 theta_dot - 15 sin(theta_ref)) / 6, -1, 1)``."""
    s = np.asarray(states, dtype=np.float64)
    u = k1 * (theta_ref - s[..., 0]) - k2 * s[..., 1] - _GRAVITY * np.sin(theta_ref)
    return np.clip(u / _TORQUE, -1.0, 1.0)


def _pd_returns(task: str, x: np.ndarray) -> np.ndarray:
    """Returns of PD controllers x = (log k1, log k2, theta_ref offset) (n, 3) from s0; -inf for
    trajectories that leave |theta| <= 1.5 within the horizon."""
    x = np.atleast_2d(x)
    k1, k2 = np.exp(x[:, 0]), np.exp(x[:, 1])
    ref = (THETA_LIM if task == "tilt" else 0.0) + x[:, 2]
    reward = _reward(task)
    s = np.broadcast_to(np.asarray(S0, dtype=np.float64), (len(x), 2)).copy()
    ret = np.zeros(len(x))
    safe = np.ones(len(x), dtype=bool)
    for _ in range(HORIZON):
        ret += reward(s)
        s = pendulum_step(s, pd_action(s, k1, k2, ref))
        safe &= np.abs(s[:, 0]) <= THETA_MAX
    return np.where(safe, ret, -np.inf)


def search_controller(task: str, n_gain: int = 30, population: int = 400, elite: int = 40,
                      cem_iters: int = 60, polish_iters: int = 100,
                      seed: int = 0) -> tuple[np.ndarray, float]:
    """Best PD controller x = (log k1, log k2, theta_ref offset) for the task and its return
    (:func:`pd_action`; theta_ref = offset for Upright, theta_lim + offset for Tilt).

    A coarse grid (k1 in [5, 2000], k2 in [0.5, 200] log-spaced, offset 0 or +-1e-4 .. +-0.1),
    then the cross-entropy method started from the grid's ``elite`` best (Gaussian, batched
    rollouts, fixed seed: deterministic), then a pattern-search polish (3^3 stencil around the
    best, steps halved when no neighbour improves). Unsafe trajectories score -inf."""
    task = _check_task(task)
    rng = np.random.default_rng(seed)
    lk1 = np.linspace(math.log(5.0), math.log(2000.0), int(n_gain))
    lk2 = np.linspace(math.log(0.5), math.log(200.0), int(n_gain))
    off = np.geomspace(1e-4, 0.1, 8)
    offsets = np.concatenate([[0.0], off, -off])
    grid = np.stack(np.meshgrid(lk1, lk2, offsets, indexing="ij"), -1).reshape(-1, 3)
    ret = _pd_returns(task, grid)
    top = np.argsort(-ret)[: int(elite)]
    best_x, best_f = grid[top[0]].copy(), float(ret[top[0]])
    if not np.isfinite(best_f):
        raise RuntimeError(f"no PD controller on the coarse grid is safe for {task}")
    mu = grid[top].mean(0)
    sd = grid[top].std(0) + np.array([0.1, 0.1, 0.002])
    for _ in range(int(cem_iters)):
        X = mu + sd * rng.standard_normal((int(population), 3))
        X[0] = best_x
        R = _pd_returns(task, X)
        order = np.argsort(-R)[: int(elite)]
        if R[order[0]] > best_f:
            best_x, best_f = X[order[0]].copy(), float(R[order[0]])
        E = X[order][np.isfinite(R[order])]
        if len(E) >= 2:
            mu = E.mean(0)
            sd = 0.7 * sd + 0.3 * E.std(0) + 1e-9
    stencil = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 3)
    step = np.array([0.05, 0.05, 1e-3])
    for _ in range(int(polish_iters)):
        if step[2] < 1e-9:
            break
        cand = best_x + stencil * step
        R = _pd_returns(task, cand)
        k = int(np.argmax(R))
        if R[k] > best_f + 1e-9:
            best_x, best_f = cand[k].copy(), float(R[k])
        else:
            step = step * 0.5
    return best_x, best_f


def _search_best_return(task: str) -> OracleResult:
    x, _ = search_controller(task)
    k1, k2 = float(np.exp(x[0])), float(np.exp(x[1]))
    ref = (THETA_LIM if task == "tilt" else 0.0) + float(x[2])
    s = np.asarray(S0, dtype=np.float64)
    states, actions = [s], []
    for _ in range(HORIZON):
        a = float(pd_action(s, k1, k2, ref))
        s = pendulum_step(s, np.array([a]))
        states.append(s)
        actions.append(a)
    details = {"k1": k1, "k2": k2, "theta_ref": ref}
    return _result(task, "search", np.asarray(states), np.asarray(actions), details)


def best_return(task: str, method: str = "dp", *, n_theta: int = N_THETA,
                n_theta_dot: int = N_THETA_DOT, n_actions: int = N_ACTIONS,
                n_fine: int = N_FINE) -> OracleResult:
    """Best safe return from s0 over the horizon (reward of the state each step starts from,
    ``|theta| <= 1.5`` throughout), by grid DP (``"dp"``, the grid arguments apply) or by a
    search over stabilising PD controllers (``"search"``); both figures are returns of
    trajectories simulated on the true dynamics, hence achievable (lower bounds on the optimum).
    Upright or Tilt only (ValueError otherwise)."""
    task = _check_task(task)
    if method == "dp":
        return _dp_best_return(task, n_theta, n_theta_dot, n_actions, n_fine)
    if method == "search":
        return _search_best_return(task)
    raise ValueError(f"unknown method {method!r}; choose 'dp' or 'search'")


def report(task: str, **grid: int) -> dict[str, Any]:
    """Ground truth of a pendulum task as a JSON-ready dict: s0, horizon, kernel area fraction
    and the best safe return by both methods (``grid`` passes n_theta / n_theta_dot /
    n_actions / n_fine to the kernel and the DP)."""
    task = _check_task(task)
    started = time.perf_counter()
    kgrid = {k: grid[k] for k in ("n_theta", "n_theta_dot") if k in grid}
    kernel = viability_kernel(**kgrid)
    dp = best_return(task, "dp", **grid)
    search = best_return(task, "search")
    return {
        "task": task,
        "s0": [float(v) for v in S0],
        "horizon": HORIZON,
        "theta_lim": THETA_LIM,
        "kernel_fraction": kernel.fraction,
        "kernel_grid": list(kernel.shape),
        "s0_viable": bool(is_viable(np.asarray(S0))),
        "best_return": {"dp": dp.value, "search": search.value},
        "safe": {"dp": dp.safe, "search": search.safe},
        "ends_viable": {"dp": dp.ends_viable, "search": search.ends_viable},
        "dp_grid_value": dp.details["grid_value"],
        "search_controller": {k: search.details[k] for k in ("k1", "k2", "theta_ref")},
        "seconds": round(time.perf_counter() - started, 2),
    }
