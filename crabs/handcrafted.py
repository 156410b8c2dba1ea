"""The handcrafted certificate of the paper's ablation (Sec. 6, "Handcrafted barrier function h"):
CRABS with an h made by hand and never trained, Algorithm 2 without Line 5 (``barrier.init:
handcrafted``, ``barrier.learn: false``).

What h is. The textbook certificate of a stabilising controller: a sublevel set of its quadratic
Lyapunov function, cut by the safe set,

    h(s) = 1 - V(s) / c - B_safe(s) [- B_box(s)],   V(s) = x^T P x,   x = (s - s*) / r,

with r the state box's half-widths (the units the learned h's network sees), s* the equilibrium of
the initial policy's closed loop, P the solution of the discrete Lyapunov equation
A^T P A - P = -(I + q K^T K) for A = d x'/d x of that closed loop at s* and K = d pi_init/d x there,
and c a level chosen so that the set is invariant (below). B_safe (with the edge pad h had when it
was built) and B_box are the learned h's own terms (barrier.py), so R.2 (h < 0 outside the safe set)
holds by construction as it does there: V >= 0, so h <= 1 - B_safe < 0 where B_safe > 1. R.1 holds
by the level rule: only levels with V(s0) <= c log 2 are considered, so h(s0) >= 1 - log 2, the
learned h's value at s0.

Why from the model. The dynamics come from the start-up model (the ensemble's mean prediction,
trained on the initial policy's start-up episodes), not from the environment: every real step goes
through the safety monitor and counts, and the model is what the certificate is checked against
anyway. The closed loop s -> mean_k T_k(s, pi_init(s)) is linearised by autograd.

Why at the equilibrium s* and not at s0. A controller's quadratic Lyapunov function is centred
where the controller holds the system; s0 need not be there (Upright starts at (0.3, -0.9), and the
initial policy brings the pendulum to rest near theta = 0), and a set centred at s0 has no invariant
level: the flow leaves s0. s* is found by rolling the model's closed loop out from s0 and polishing
with Newton's method.

Why the control weight q. q = 0 is the plain equation A^T P A - P = -I. The initial controllers
saturate (|a| = 1) a short way from s*, and the linearisation then says nothing; on Upright, with the
true dynamics, no level of the q = 0 function that holds s0 is invariant (the sets through s0 reach
|theta_dot| ~ 3, where the controller saturates and V grows). With q > 0, V also counts the
controller's future actions, sum_k |A^k x|^2 + q |K A^k x|^2, so its level sets are thin across the
direction where the control grows and stay nearer the unsaturated region. The weights
``CONTROL_WEIGHTS`` are all tried; the largest C_h among those with an invariant level is kept.

The level c (``invariant_level``). The largest level for which the model keeps C_h invariant under
the initial policy with the certificate's own margin: on states sampled from C_h (uniformly inside
the ellipsoid {V <= c}, on its surface, uniformly in the state box, and in the slivers where B_safe
and B_box cut it; those with h >= 0 kept: 4-6 x ``barrier.init_samples`` states), every ensemble
member's next state s' satisfies h(s') >= eps + margin, i.e. U(s, pi_init(s), h) + eps + margin <= 0,
with U as Alg. 1 and the check compute it (eps = ``barrier.eps``, margin = ``barrier.train_margin``).
Levels are tried from the one whose ellipsoid covers the whole state box downwards on a geometric
grid; the first that passes is refined by bisection (on a log scale) towards the next larger grid
level, which failed. If no level passes for any q, the (q, c) with the smallest largest U is kept
and the run's start-up row says so (``hand_invariant`` false, ``hand_max_U`` > -eps - margin): a
quadratic set around s* that holds s0 also holds the mirror image of the start-up trajectory, where
the model has no data, and there the ensemble may not agree that the initial policy stays inside. A
handcrafted h does not adapt to the data; that is what the ablation measures.

The run then certifies exactly as CRABS does: after start-up the adversary (MALA) and the audit must
find no state of C_h with U + eps > 0 for the initial policy (the level rule's samples are not the
proof), and every epoch's policy, trained by constrained SAC with adversarial steps against this
fixed h, must pass the same check; while the triple is not certified the last certified policy (at
first the initial one) acts, guarded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch

from crabs.barrier import Barrier, U
from crabs.config import BarrierConfig
from crabs.envs.spec import SafetySpec
from crabs.states import uniform

CONTROL_WEIGHTS = (0.0, 1.0, 10.0, 100.0)
"""The weights q of the control in Q = I + q K^T K (module docstring); 0: the plain A^T P A - P = -I."""

Step = Callable[[torch.Tensor], torch.Tensor]
"""A closed loop's one-step map on a batch of states (..., d) -> (..., d)."""

SLIVER = 0.01
"""Width of the band beyond a safety term's cut (in units of the limit) where B_safe / B_box < 1,
so C_h may reach into it: w(z) = 100 (z - 1 + margin) grows from 0 to 1 across it."""


class HandcraftedBarrier(Barrier):
    """The fixed certificate h(s) = 1 - V(s) / c - B_safe(s) [- B_box(s)] (module docstring): no
    network and no parameters; s*, P and c are buffers, so they are saved with h in checkpoints and
    snapshots and restored by ``load_state_dict``. Until ``set_quadratic`` (or a loaded state) gives
    it a level, evaluating it is an error rather than a silent placeholder."""

    def __init__(self, spec: SafetySpec, cfg: BarrierConfig, scale: torch.Tensor, low=None, high=None):
        super().__init__(spec, cfg, scale, low, high)
        d = spec.dim
        self.register_buffer("center", torch.as_tensor(spec.s0, dtype=torch.float32).clone())
        self.register_buffer("P", torch.eye(d))
        self.register_buffer("level", torch.zeros(()))   # c; 0: not built yet

    def make_f(self, spec: SafetySpec, cfg: BarrierConfig) -> None:
        return None

    @torch.no_grad()
    def set_quadratic(self, center, P, level: float) -> None:
        """Set s*, P (box-scaled coordinates) and the level c."""
        if not level > 0:
            raise ValueError(f"the level c must be positive, got {level}")
        self.center.copy_(torch.as_tensor(center, dtype=torch.float32))
        self.P.copy_(torch.as_tensor(P, dtype=torch.float32))
        self.level.fill_(float(level))

    def V(self, s: torch.Tensor) -> torch.Tensor:
        """V(s) = x^T P x with x = (s - s*) / r."""
        x = (s - self.center) / self.scale
        return torch.einsum("...i,ij,...j->...", x, self.P, x)

    def shape(self, s: torch.Tensor) -> torch.Tensor:
        if not bool(self.level > 0):
            raise RuntimeError("the handcrafted h has no level yet: build it with "
                               "crabs.handcrafted.build_handcrafted (or load a saved state)")
        return self.V(s) / self.level

    def f_rel(self, s: torch.Tensor) -> torch.Tensor:
        raise TypeError("the handcrafted h has no network f")

    def dilate(self, delta: float) -> None:
        raise TypeError("the handcrafted h is fixed (barrier.learn: false): it is never dilated")


def barrier_type(cfg: BarrierConfig) -> type[Barrier]:
    """The certificate class a config trains (``Barrier``) or keeps fixed (``HandcraftedBarrier``,
    ``barrier.learn: false``); every reader of a run's h (verify, judge) builds the same class."""
    return Barrier if cfg.learn else HandcraftedBarrier


# -- the closed loop of the initial policy under the model ------------------------------------------
def closed_loop(model, policy) -> Step:
    """s -> the ensemble's mean prediction of the next state under the policy's mean action."""
    def step(s: torch.Tensor) -> torch.Tensor:
        return model.means(s, policy.mean_action(s)).mean(0)

    return step


def jacobian(step: Step, s: torch.Tensor) -> np.ndarray:
    """d step(s) / d s at the single state s (d,), by autograd."""
    J = torch.autograd.functional.jacobian(lambda x: step(x[None])[0], s.detach().float())
    return J.double().numpy()


def equilibrium(step: Step, s0: torch.Tensor, scale: torch.Tensor, rollout: int = 500,
                newton: int = 20, tol: float = 1e-4) -> torch.Tensor:
    """The fixed point s* = step(s*) that the closed loop reaches from s0: ``rollout`` steps from s0,
    then Newton's method on step(s) - s. Raises if it does not converge to ``tol`` box half-widths
    (the closed loop does not settle: it has no equilibrium to build a Lyapunov function at)."""
    with torch.no_grad():
        s = s0.detach().float().clone()
        for _ in range(rollout):
            s = step(s[None])[0]
    for _ in range(newton):
        with torch.no_grad():
            g = (step(s[None])[0] - s).double().numpy()
        if np.max(np.abs(g) / scale.double().numpy()) < tol:
            return s
        J = jacobian(step, s) - np.eye(len(g))
        s = s - torch.as_tensor(np.linalg.solve(J, g), dtype=torch.float32)
    with torch.no_grad():
        miss = float(((step(s[None])[0] - s).abs() / scale).max())
    if not (miss < tol):
        raise ValueError(f"the initial policy's closed loop under the model does not settle from s0 "
                         f"(|s' - s| = {miss:.2g} box half-widths after {rollout} steps and Newton): "
                         "no equilibrium for a Lyapunov function")
    return s


def lyapunov_matrix(A: np.ndarray, Q: np.ndarray | None = None) -> np.ndarray:
    """The P > 0 solving the discrete Lyapunov equation A^T P A - P = -Q (Q = I by default), so that
    V(x) = x^T P x decreases by x^T Q x in one step of x' = A x. Raises for an A that is not stable
    (spectral radius >= 1): then no such P exists."""
    A = np.asarray(A, dtype=np.float64)
    rho = float(np.max(np.abs(np.linalg.eigvals(A))))
    if rho >= 1.0:
        raise ValueError(f"the initial policy's closed loop is not stable under the model (spectral "
                         f"radius {rho:.4f} >= 1): it has no quadratic Lyapunov function")
    Q = np.eye(len(A)) if Q is None else np.asarray(Q, dtype=np.float64)
    P = scipy.linalg.solve_discrete_lyapunov(A.T, Q)
    return (P + P.T) / 2


# -- samples of C_h and the level rule --------------------------------------------------------------
def ellipsoid_states(h: HandcraftedBarrier, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """n states uniform inside {V <= c} and n on its surface {V = c}."""
    d = len(h.center)
    L = torch.linalg.cholesky(h.P.double())
    u = torch.randn(2 * n, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    r = torch.ones(2 * n, 1, dtype=torch.float64)
    r[:n] = torch.rand(n, 1, generator=gen, dtype=torch.float64) ** (1.0 / d)
    # x = sqrt(c) L^-T (r u): x^T P x = c r^2
    x = math.sqrt(float(h.level)) * torch.linalg.solve_triangular(L.T, (r * u).T, upper=True).T
    return (h.center.double() + h.scale.double() * x).float()


def sliver_states(h: HandcraftedBarrier, s: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """The states ``s`` moved, one coordinate at a time, into the band where a safety term (B_safe's
    limit, moved in by its margin and the edge pad, and with ``box_barrier`` the box's) cuts C_h:
    the edge of C_h that is not the ellipsoid's."""
    spec, out = h.spec, []
    faces = [(int(i), 0.0, float(zmax) * (1 - spec.margin - float(pad)), float(zmax))
             for i, zmax, pad in zip(spec.constrained_index, spec.constrained_max, h.pad)]
    if h.box:
        r = h.box_radius.tolist()
        faces += [(i, float(h.box_center[i]), r[i] * (1 - spec.margin), r[i]) for i in range(spec.dim)]
    for i, mid, cut, unit in faces:
        t = s.clone()
        side = torch.where(s[:, i] >= mid, 1.0, -1.0)
        t[:, i] = mid + side * (cut + SLIVER * unit * torch.rand(len(s), generator=gen))
        out.append(t)
    return torch.cat(out) if out else s[:0]


@torch.no_grad()
def level_states(h: HandcraftedBarrier, n: int, low: torch.Tensor, high: torch.Tensor,
                 gen: torch.Generator | None) -> torch.Tensor:
    """States of C_h to test a level on: n uniform inside the ellipsoid {V <= c}, n on its surface,
    n uniform in the box [low, high] (the ellipsoid may be much larger than the safe set), and the
    interior and box ones moved into the slivers where the safety terms cut C_h; those with
    h >= 0 kept."""
    s = ellipsoid_states(h, n, gen)
    box = uniform(low, high, n, gen)
    s = torch.cat([s, box, sliver_states(h, torch.cat([s[:n], box]), gen)])
    return s[h(s) >= 0]


@torch.no_grad()
def worst_U(h: HandcraftedBarrier, model, policy, s: torch.Tensor) -> float:
    """The largest U(s, pi(s), h) over the states ``s`` (-inf for none)."""
    if not len(s):
        return -math.inf
    return float(U(h, model, s, policy.mean_action(s)).max())


def invariant_level(h: HandcraftedBarrier, model, policy, s0: torch.Tensor, low: torch.Tensor,
                    high: torch.Tensor, need: float, n: int = 4096, levels: int = 24, refine: int = 8,
                    gen: torch.Generator | None = None) -> tuple[float, dict]:
    """The level rule of the module docstring for h's s* and P: levels c on a geometric grid from the
    one whose ellipsoid covers the box [low, high] down to the lowest that keeps V(s0) <= c log 2;
    the largest at which the sampled states of C_h all have U + ``need`` <= 0, refined by
    ``refine`` bisection steps towards the next larger grid level (which failed); if none passes,
    the grid level with the smallest largest U (``hand_invariant`` false). Sets h's level to it;
    returns c and what the search saw."""
    center, P = h.center.clone(), h.P.clone()
    corners = torch.cartesian_prod(*[torch.stack([lo, hi]) for lo, hi in zip(low, high)])
    corners = corners.reshape(-1, len(low))
    c_hi = float(h.V(corners).max())
    c_lo = max(float(h.V(s0[None])[0]) / math.log(2.0), c_hi * 1e-6)
    grid = np.geomspace(c_hi, c_lo, levels) if c_lo < c_hi else np.array([c_lo])

    def worst(c: float) -> tuple[float, int]:
        h.set_quadratic(center, P, c)
        s = level_states(h, n, low, high, gen)
        return worst_U(h, model, policy, s), len(s)

    tried, found, above, least = 0, None, None, None
    for c in grid:
        tried += 1
        u, m = worst(float(c))
        if u + need <= 0:
            found = (float(c), u, m)
            break
        above = float(c)
        if least is None or u < least[1]:
            least = (float(c), u, m)
    if found is not None and above is not None:
        for _ in range(refine):
            mid = math.sqrt(found[0] * above)
            tried += 1
            u, m = worst(mid)
            if u + need <= 0:
                found = (mid, u, m)
            else:
                above = mid
    c, u, m = found if found is not None else least
    h.set_quadratic(center, P, c)
    return c, {"hand_level": c, "hand_invariant": found is not None, "hand_max_U": u,
               "hand_levels_tried": tried, "hand_samples": m}


def build_handcrafted(h: HandcraftedBarrier, model, policy, n: int = 4096, eps: float = 0.002,
                      margin: float = 0.01, gen: torch.Generator | None = None,
                      weights: tuple[float, ...] = CONTROL_WEIGHTS) -> dict:
    """Make ``h`` the handcrafted certificate of ``policy`` under ``model`` (module docstring): s*
    from the model's closed loop; for each control weight q, P from A^T P A - P = -(I + q K^T K) in
    box-scaled coordinates and c by the level rule with need = eps + margin. Of the (P, c) that pass,
    the one whose C_h holds the most of the state box (uniform states); if none passes, the one with
    the smallest largest U (``hand_invariant`` false in what it returns, for the run's metrics)."""
    step = closed_loop(model, policy)
    s0 = h.s0.clone()
    star = equilibrium(step, s0, h.scale)
    scale = h.scale.double().numpy()
    A = jacobian(step, star) * scale[None, :] / scale[:, None]   # d x'/d x, x = (s - s*) / r
    K = jacobian(policy.mean_action, star) * scale[None, :]       # d a/d x
    if h.box:
        low, high = h.box_center - h.box_radius, h.box_center + h.box_radius
    else:
        low, high = s0 - h.scale, s0 + h.scale
    judge = uniform(low, high, n, gen)
    best, best_key = None, None
    for q in weights:
        P = lyapunov_matrix(A, np.eye(len(A)) + q * K.T @ K)
        h.set_quadratic(star, P, 1.0)
        c, info = invariant_level(h, model, policy, s0, low, high, eps + margin, n=n, gen=gen)
        with torch.no_grad():
            vol = float((h(judge) >= 0).float().mean())
        # invariant first, then the larger C_h; among non-invariant ones the smaller violation
        key = (info["hand_invariant"], vol if info["hand_invariant"] else -info["hand_max_U"])
        if best_key is None or key > best_key:
            best, best_key = (q, P, c, vol, info), key
    q, P, c, vol, info = best
    h.set_quadratic(star, P, c)
    rho = float(np.max(np.abs(np.linalg.eigvals(A))))
    return {**info, "hand_weight": q, "hand_volume": vol, "hand_rho": rho,
            "hand_center": " ".join(f"{x:.4g}" for x in star.tolist())}


__all__ = ["CONTROL_WEIGHTS", "HandcraftedBarrier", "barrier_type", "build_handcrafted",
           "closed_loop", "equilibrium", "invariant_level", "jacobian", "lyapunov_matrix"]
