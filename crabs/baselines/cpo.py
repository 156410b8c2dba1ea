"""Baseline (b) of Sec. 6: Constrained Policy Optimization (Achiam et al., 2017), App. C.3.

On-policy: ``cpo.batch`` real steps of the stochastic policy (started from the task's safe initial
policy, as the paper gives CPO), then one CPO step. The constraint is on the expected number of
violations per trajectory, J_C(pi) <= d (``cpo.cost_limit``, 0: no violation). With g and b the
gradients of the reward and cost surrogates (GAE advantages, importance ratios, means over the
batch's steps), H the Fisher matrix (Hessian of the mean KL) and c = J_C - d on the same per-step
scale (the batch's violations per step minus d / horizon), the step solves

    max_x g.x   s.t.   c + b.x <= 0,   x^T H x / 2 <= delta                    (CPO, Eq. 10)

by its dual (Achiam et al., App. 10.2): x = (H^-1 g - nu H^-1 b) / lambda, or, when no point of the
trust region satisfies the linearised constraint, the recovery step x = -sqrt(2 delta / b.H^-1 b)
H^-1 b. H^-1 is applied by conjugate gradients; a backtracking line search keeps the KL within
1.5 delta and the cost surrogate within the constraint. Value functions for reward and cost are
regressed on their GAE returns. Actions are tanh-squashed Gaussian samples; importance ratios and
KL are those of the Gaussian before the squash (the tanh factors cancel).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crabs.baselines.common import Learner, train_baseline
from crabs.baselines.config import BaselineConfig
from crabs.nets import mlp
from crabs.system import System


def _flat_grad(y: torch.Tensor, params, **kw) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(y, params, **kw)])


def conjugate_gradient(Avp, b: torch.Tensor, iters: int = 10, tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive definite A given x -> A x."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        Ap = Avp(p)
        alpha = rr / (p @ Ap + 1e-12)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def cpo_step_direction(v: torch.Tensor, w: torch.Tensor | None, q: float, r: float, s: float,
                       c: float, delta: float) -> tuple[torch.Tensor, str]:
    """The solution of Eq. 10 by its dual, v = H^-1 g, w = H^-1 b, q = g.v, r = g.w, s = b.w,
    c = J_C - d. Maximising over x gives x = (v - nu w) / lambda and the dual

        min_{lambda, nu >= 0}  (q - 2 nu r + nu^2 s) / (2 lambda) - nu c + lambda delta,

    with nu* = max(0, (r + lambda c) / s). Where nu* > 0 it is (A / lambda + B lambda) / 2 - r c / s,
    A = q - r^2 / s, B = 2 delta - c^2 / s; where nu* = 0 it is q / (2 lambda) + lambda delta (a TRPO
    step). (Achiam et al., Theorem 1 and App. 10.2, whose r has the opposite sign.) Returns the step
    and which case applied."""
    eps = 1e-10
    if w is None or s <= eps:   # no cost gradient: the constraint is flat, a TRPO step if feasible
        if c > 0:
            raise ValueError("infeasible with no cost gradient")
        return math.sqrt(2 * delta / (q + eps)) * v, "trpo"
    A, B = q - r * r / s, 2 * delta - c * c / s
    if B < 0:   # the constraint plane lies beyond the trust region
        if c > 0:   # ... on the near side: no point of the region is feasible, so recover
            return -math.sqrt(2 * delta / s) * w, "recovery"
        return math.sqrt(2 * delta / (q + eps)) * v, "trpo"   # ... on the far side: all feasible
    inf = math.inf
    if c > 0:        # where nu* > 0 (lambda c + r > 0), and where nu* = 0
        set_a, set_b = (max(0.0, -r / c), inf), ((0.0, -r / c) if -r / c > 0 else None)
    elif c < 0:
        set_a, set_b = ((0.0, -r / c) if -r / c > 0 else None), (max(0.0, -r / c), inf)
    else:
        set_a, set_b = ((0.0, inf), None) if r > 0 else (None, (0.0, inf))
    candidates = []
    if set_a is not None:
        lam = min(max(math.sqrt(max(A, 0.0) / max(B, eps)), set_a[0]), set_a[1])
        candidates.append((0.5 * (A / max(lam, eps) + B * lam) - r * c / s, lam))
    if set_b is not None:
        lam = min(max(math.sqrt(q / (2 * delta)), set_b[0]), set_b[1])
        candidates.append((0.5 * q / max(lam, eps) + lam * delta, lam))
    lam = max(min(candidates)[1], eps)
    nu = max(0.0, (r + lam * c) / s)
    return (v - nu * w) / lam, "constrained" if nu > 0 else "trpo"


class CPO(Learner):
    algorithm = "cpo"
    label = "CPO"
    uses_sac = False

    def __init__(self, system, cfg, run_dir, progress: bool = True):
        super().__init__(system, cfg, run_dir, progress)
        c = cfg.cpo
        self.v_r = mlp(self.obs_dim, c.vf_hidden, 1)
        self.v_c = mlp(self.obs_dim, c.vf_hidden, 1)
        self.vf_opt = torch.optim.Adam([*self.v_r.parameters(), *self.v_c.parameters()], lr=c.vf_lr)
        self.batch: list[tuple] = []
        self._z: np.ndarray | None = None
        self.updates = 0
        self.last_case = ""

    @property
    def batch_size(self) -> int:
        c = self.cfg.cpo
        if c.batch:
            return c.batch
        return 1000 if self.sys.spec.dim <= 2 else 5000   # App. C.3: 1000 (pendulum), 5000 (cart-pole)

    def act(self, s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            mu, log_std = self.policy(torch.as_tensor(s, dtype=torch.float32))
            z = mu + log_std.exp() * torch.randn_like(mu)
        self._z = z.double().numpy()
        return np.tanh(self._z)

    def store(self, s, a_env, a_task, r, s2, cost, term) -> None:
        r = self.cfg.reward(r, cost)   # (default: no penalty; the violations are constrained instead)
        self.batch.append((np.asarray(s, np.float32), self._z.astype(np.float32), float(r), float(cost),
                           float(term), np.asarray(s2, np.float32)))

    def learn(self) -> None:
        if len(self.batch) >= self.batch_size:
            self.update()
            self.batch = []

    # -- one CPO step -----------------------------------------------------------------------------
    def advantages(self, s, r, s2, term, end, v: nn.Module, lam: float):
        """GAE(gamma, lambda) advantages and returns; ``end`` marks the last step of a trajectory
        piece (bootstrapped with V(s') unless ``term``)."""
        gamma = self.cfg.sac.gamma
        with torch.no_grad():
            vs, vs2 = v(s).squeeze(-1), v(s2).squeeze(-1)
        delta = r + gamma * (1 - term) * vs2 - vs
        adv = torch.zeros_like(r)
        run = 0.0
        for t in range(len(r) - 1, -1, -1):
            run = delta[t] + gamma * lam * (1 - term[t]) * (1 - end[t]) * run
            adv[t] = run
        return adv, adv + vs

    def update(self) -> None:
        c = self.cfg.cpo
        s, z, r, cost, term, s2 = (torch.as_tensor(np.array(x)) for x in zip(*self.batch))
        end = torch.zeros_like(r)
        end[-1] = 1.0
        end[:-1] = torch.as_tensor([float(not np.array_equal(self.batch[i][5], self.batch[i + 1][0])
                                          or self.batch[i][4] > 0) for i in range(len(self.batch) - 1)])
        adv_r, ret_r = self.advantages(s, r, s2, term, end, self.v_r, c.gae_lambda)
        adv_c, ret_c = self.advantages(s, cost, s2, term, end, self.v_c, c.gae_lambda)
        adv_r = (adv_r - adv_r.mean()) / (adv_r.std() + 1e-8)
        adv_c = adv_c - adv_c.mean()
        # c of Eq. 10 per step, the scale of the surrogates (means over the batch's steps): the
        # violations per step minus d spread over the horizon (safety-starter-agents: c / EpLen)
        rate = float(cost.mean())
        c_val = rate - c.cost_limit / self.sys.spec.horizon

        params = list(self.policy.parameters())
        with torch.no_grad():
            mu_old, ls_old = self.policy(s)

        def logp(mu, ls):
            return (-0.5 * ((z - mu) / ls.exp()) ** 2 - ls).sum(-1)

        lp_old = logp(mu_old, ls_old)

        def surrogates():
            mu, ls = self.policy(s)
            ratio = (logp(mu, ls) - lp_old).exp()
            return (ratio * adv_r).mean(), (ratio * adv_c).mean()

        def kl():
            mu, ls = self.policy(s)
            var, var_old = (2 * ls).exp(), (2 * ls_old).exp()
            return (ls - ls_old + (var_old + (mu_old - mu) ** 2) / (2 * var) - 0.5).sum(-1).mean()

        surr_r, surr_c = surrogates()
        g = _flat_grad(surr_r, params, retain_graph=True)
        b = _flat_grad(surr_c, params)
        grad_kl = _flat_grad(kl(), params, create_graph=True)

        def Fvp(x):
            return _flat_grad(grad_kl @ x, params, retain_graph=True) + c.damping * x

        v = conjugate_gradient(Fvp, g, c.cg_iters)
        q = float(g @ v)
        w = None
        r_, s_ = 0.0, 0.0
        if float(b @ b) > 1e-12:
            w = conjugate_gradient(Fvp, b, c.cg_iters)
            r_, s_ = float(g @ w), float(b @ w)
        try:
            step, case = cpo_step_direction(v, w, q, r_, s_, c_val, c.step_size)
        except ValueError:
            step, case = torch.zeros_like(g), "none"
        old = torch.nn.utils.parameters_to_vector(params).detach().clone()
        sr0, sc0 = float(surr_r.detach()), float(surr_c.detach())
        accepted = False
        for j in range(c.backtrack_iters):
            torch.nn.utils.vector_to_parameters(old + c.backtrack_ratio**j * step, params)
            with torch.no_grad():
                nr, nc = (float(x) for x in surrogates())
                kl_new = float(kl())
            cost_ok = nc - sc0 <= max(-c_val, 0.0) or case == "recovery"
            if kl_new <= 1.5 * c.step_size and cost_ok and (nr >= sr0 or case == "recovery"):
                accepted = True
                break
        if not accepted:
            torch.nn.utils.vector_to_parameters(old, params)
        # value functions (regression on the GAE returns)
        for _ in range(c.vf_iters):
            loss = (((self.v_r(s).squeeze(-1) - ret_r) ** 2).mean()
                    + ((self.v_c(s).squeeze(-1) - ret_c) ** 2).mean())
            self.vf_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.vf_opt.step()
        self.updates += 1
        self.last_case = case if accepted else f"{case} (rejected)"
        self.last_info = {"q_loss": float(loss.detach()), "batch_violations": int(cost.sum())}

    def baseline_state(self) -> dict:
        return {"v_r": self.v_r.state_dict(), "v_c": self.v_c.state_dict(),
                "vf_opt": self.vf_opt.state_dict(), "updates": self.updates}

    def load_baseline_state(self, d: dict) -> None:
        self.v_r.load_state_dict(d["v_r"])
        self.v_c.load_state_dict(d["v_c"])
        self.vf_opt.load_state_dict(d["vf_opt"])
        self.updates = int(d["updates"])

    def row_extras(self) -> dict:
        return {"cpo_updates": self.updates, "cpo_step": self.last_case,
                "batch_violations": self.last_info.get("batch_violations", 0)}


def train_cpo(system: str | System | None, config: BaselineConfig | None = None,
              out: str | Path = "runs/cpo", resume: bool = False, progress: bool = True) -> dict:
    """Run the CPO baseline (see :func:`crabs.baselines.common.train_baseline`)."""
    return train_baseline(CPO, system, config, out, resume, progress)
