"""The adversary's sampler: Metropolis-adjusted Langevin (Algorithm 5, Appendix D).

``mala_step`` is a generic, batched MALA step over m independent chains with per-chain step sizes
adapted toward a target acceptance rate, a hard constraint (proposals outside the domain are
rejected) and the standard Metropolis-Hastings correction for the proposal
``x' = x + tau grad log p(x) + sqrt(2 tau) zeta``:

    log q(x' | x) = -|x' - x - tau grad log p(x)|^2 / (4 tau)

(the authors' release used -|zeta|^2 for the forward term, which is off by a factor of two; see
docs). ``Adversary`` keeps a pool of chains targeting exp(U(s, pi(s), h) / T) inside C_h (Sec. 3),
warm-started across steps, projects chains that fell out of C_h back by gradient steps on
relu(-h), and re-draws its candidate box from the certified set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from crabs.config import MALAConfig
from crabs.states import certified_box, certified_samples

LogProbFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""x (m, d) -> (log p (m,), grad log p (m, d), inside domain (m,) bool), all detached."""


@dataclass
class MALAState:
    x: torch.Tensor        # (m, d) current states
    logp: torch.Tensor     # (m,) log density at x
    grad: torch.Tensor     # (m, d) gradient of log density at x
    inside: torch.Tensor   # (m,) bool: x in the domain
    tau: torch.Tensor      # (m,) per-chain step size


@dataclass
class MALAInfo:
    accepted: torch.Tensor  # (m,) bool
    accept_rate: float


def mala_init(x: torch.Tensor, fn: LogProbFn, tau: float) -> MALAState:
    logp, grad, inside = fn(x)
    return MALAState(x, logp, grad, inside, torch.full((len(x),), float(tau)))


def mala_step(state: MALAState, fn: LogProbFn, gen: torch.Generator | None = None,
              target_accept: float = 0.574, adapt_rate: float = 0.01,
              precond: torch.Tensor | None = None) -> tuple[MALAState, MALAInfo]:
    """One MALA step for every chain (Alg. 5). ``precond`` (d,) is a diagonal scale: the chain moves
    in z = x / precond, so anisotropic domains (angles vs speeds) mix alike."""
    x, tau = state.x, state.tau[:, None]
    p = torch.ones(x.shape[-1], dtype=x.dtype) if precond is None else precond.to(x.dtype)
    zeta = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    # in z coordinates: z' = z + tau grad_z + sqrt(2 tau) zeta, grad_z = p * grad_x
    gz = state.grad * p
    prop = x + (tau * gz + torch.sqrt(2 * tau) * zeta) * p
    logp2, grad2, inside2 = fn(prop)
    gz2 = grad2 * p
    z, z2 = x / p, prop / p
    log_fwd = -((z2 - z - tau * gz) ** 2).sum(-1) / (4 * tau[:, 0])
    log_rev = -((z - z2 - tau * gz2) ** 2).sum(-1) / (4 * tau[:, 0])
    log_alpha = logp2 - state.logp + log_rev - log_fwd
    u = torch.rand(len(x), generator=gen, dtype=x.dtype)
    ok = inside2 & torch.isfinite(logp2) & (torch.log(u) < log_alpha)
    ok = ok | (inside2 & ~state.inside)  # a chain outside the domain takes any inside proposal
    m = ok[:, None]
    new = MALAState(torch.where(m, prop, x), torch.where(ok, logp2, state.logp),
                    torch.where(m, grad2, state.grad), torch.where(ok, inside2, state.inside),
                    state.tau * (1 + adapt_rate * (ok.to(x.dtype) - target_accept)))
    return new, MALAInfo(ok, float(ok.float().mean()))


class Adversary:
    """A warm-started pool of MALA chains sampling exp(U(s, pi(s), h) / T) restricted to C_h."""

    def __init__(self, box_low, box_high, cfg: MALAConfig, seed: int = 0):
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed)
        self.low = torch.as_tensor(box_low, dtype=torch.float32)
        self.high = torch.as_tensor(box_high, dtype=torch.float32)
        self.precond = (self.high - self.low) / 2          # the safe box's half-widths
        self.state: MALAState | None = None
        self.box = (self.low, self.high)  # where chains are drawn: set by reset()
        self.stale = True

    # -- the target ----------------------------------------------------------------------
    def _fn(self, h, model, policy) -> LogProbFn:
        from crabs.barrier import U_pi

        T = self.cfg.temperature

        def fn(x):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                u = U_pi(h, model, policy, x)
                g = torch.autograd.grad(u.sum(), x)[0]
            with torch.no_grad():
                inside = h(x) >= 0
            return (u / T).detach(), (g / T).detach(), inside

        return fn

    def invalidate(self) -> None:
        """h, the policy or the model changed: re-evaluate the current states before the next step."""
        self.stale = True

    # -- the pool ------------------------------------------------------------------------
    def certified_box(self, h, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounding box of certified states among uniform samples of the safe box, scaled by
        ``box_scale`` about its centre (clipped to the safe box)."""
        return certified_box(h, self.low, self.high, n or self.cfg.box_samples, self.cfg.box_scale, self.gen)

    @torch.no_grad()
    def _draw(self, h, m: int, tries: int = 50) -> torch.Tensor:
        """Up to m states uniform in C_h (rejection sampling in the current candidate box)."""
        lo, hi = self.box
        pts, n = [], 0
        for _ in range(tries):
            pts.append(certified_samples(h, (lo, hi), 4 * m, self.gen))
            n += len(pts[-1])
            if n >= m:
                break
        return torch.cat(pts)[:m]

    @torch.no_grad()
    def reset(self, h, model, policy) -> None:
        """Draw the chains uniformly in the certified box, keeping certified ones (rejection)."""
        self.box = self.certified_box(h)
        m = self.cfg.pool(len(self.low))
        pool = self._draw(h, m)
        if len(pool) == 0:
            pool = h.s0[None].clone()
        x = pool[torch.randint(len(pool), (m,), generator=self.gen)] if len(pool) < m else pool
        self.state = mala_init(x, self._fn(h, model, policy), self.cfg.init_step)
        self.stale = False

    def refresh(self, h, fn: LogProbFn) -> None:
        """Re-draw ``refresh_frac`` of the chains uniformly from C_h (a departure: with few chains
        the pool otherwise concentrates on one mode while h changes elsewhere)."""
        st = self.state
        r = int(round(self.cfg.refresh_frac * len(st.x)))
        if r == 0:
            return
        new = self._draw(h, r, tries=2)
        if len(new) == 0:
            return
        idx = torch.randperm(len(st.x), generator=self.gen)[: len(new)]
        logp, grad, inside = fn(new)
        st.x[idx], st.logp[idx], st.grad[idx], st.inside[idx] = new, logp, grad, inside
        st.tau[idx] = st.tau.median()

    def project(self, h) -> None:
        """Pull chains that fell outside C_h back in: gradient steps on relu(-h) (App. D)."""
        st = self.state
        x = st.x.clone()
        for _ in range(self.cfg.project_steps):
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                hv = h(xg)
                out = hv < 0
                if not bool(out.any()):
                    break
                g = torch.autograd.grad(torch.relu(-hv).sum(), xg)[0]
            step = g * self.precond**2
            step = step / (step / self.precond).norm(dim=-1, keepdim=True).clamp_min(1e-12)
            x = torch.where(out[:, None], x - self.cfg.project_lr * step, x)
            x = torch.maximum(torch.minimum(x, self.high), self.low)
        st.x = x.detach()

    def step(self, h, model, policy) -> dict:
        """One adversary step: refresh if stale, project escaped chains, one MALA step."""
        fn = self._fn(h, model, policy)
        if self.state is None:
            self.reset(h, model, policy)
        elif self.stale:
            self.project(h)  # under the new h: chains it no longer certifies are pulled back in
            tau = self.state.tau
            self.state = mala_init(self.state.x, fn, 1.0)
            self.state.tau = tau
            self.stale = False
        self.state, info = mala_step(self.state, fn, self.gen, self.cfg.target_accept,
                                     self.cfg.adapt_rate, self.precond)
        self.state.tau.clamp_(1e-8, 1.0)
        self.refresh(h, fn)
        return {"accept": info.accept_rate}

    def violators(self, eps: float) -> torch.Tensor:
        """The adversarial candidates W of Alg. 1: inside C_h with U + eps > 0."""
        st = self.state
        u = st.logp * self.cfg.temperature
        return st.x[st.inside & (u + eps > 0)]

    def max_U(self) -> float:
        return self.best()[0]

    def best(self) -> tuple[float, torch.Tensor | None]:
        """The largest U among the chains inside C_h now, and that chain's state (None: none inside)."""
        st = self.state
        if not bool(st.inside.any()):
            return -math.inf, None
        u = torch.where(st.inside, st.logp * self.cfg.temperature, -math.inf)
        i = int(u.argmax())
        return float(u[i]), st.x[i].clone()

    def candidates(self) -> torch.Tensor:
        return self.state.x
