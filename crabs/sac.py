"""Constrained SAC and the adversarial policy step (Sec. 4.4, Appendix B, Algorithm 4).

* Policy loss (Eq. 10): E[alpha log pi_expl(a|s) - Q-hat(s, a)], with Q-hat = Q1 where
  U(s, a, h) <= 0 and -C - U(s, a, h) elsewhere, so proposals that would leave C_h are pushed back.
* Critic loss (Eq. 11): the TD error only where the next action a' ~ pi_expl(s') is certified,
  U(s', a', h) <= 0 (Alg. 3 would reject the others); twin Q, target networks, soft target.
  With ``clip_target`` the bootstrap min Q_targ(s', a') is clipped to the range a soft value can
  take given the rewards seen so far, [r_lo - alpha max(log pi, 0), r_hi + alpha dim(A) log 2] /
  (1 - gamma) (dim(A) log 2 is the entropy of the uniform law on [-1, 1]^dim(A), the most a
  tanh-squashed policy can have), so an over-estimate cannot feed on itself.
* Temperature (Eq. 12) learned toward the target entropy -dim(A), unless ``learn_alpha`` is off
  (alpha then stays at ``init_alpha``).
* Model-based actor term (``model_horizon`` H > 0, a departure; the paper has none): the policy
  loss also has -mean_s [sum_{t<H} gamma^t r(s_t) + gamma^H min Q(s_H, pi(s_H))], the mean policy
  rolled out from minibatch states through the ensemble's mean prediction, differentiated through
  the model (value expansion, as in SVG(H) / MVE). Moving an equilibrium the policy holds changes
  Q(s, a) by far less than the critic's error, so one-step Q gradients barely do it (Tilt's hold
  point); an H-step return through the model can where the model has data, and holds the policy
  back where it extrapolates (measurements in docs/config.md). With ``model_masked`` the rollout
  is valued like Q-hat: its first step with U > 0 ends it with -C - U.
* Adversarial step: minimise the mean of U(s*, pi(s*), h) over the adversarial states s* (the
  gradient of C* w.r.t. the policy parameters, Sec. 4.4), optionally plus a proximal term on the
  mean action elsewhere (``adv_anchor``, a departure; see ``adversarial_step``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from crabs.barrier import U
from crabs.config import SACConfig
from crabs.nets import TanhGaussianPolicy, mlp, soft_update


class TwinQ(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden, act: str = "relu"):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, hidden, 1, act)
        self.q2 = mlp(obs_dim + act_dim, hidden, 1, act)

    def forward(self, s, a) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([s, a], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class ConstrainedSAC:
    def __init__(self, policy: TanhGaussianPolicy, cfg: SACConfig, reward=None, s0=None):
        self.cfg = cfg
        self.policy = policy
        if cfg.model_horizon > 0 and reward is None:
            raise ValueError("sac.model_horizon > 0 needs the system's reward r(s) (System.reward), "
                             "written with operations that also work on torch tensors")
        if cfg.model_horizon > 0 and cfg.model_start == "s0" and s0 is None:
            raise ValueError("sac.model_start 's0' needs the system's s0")
        self.reward = reward
        self.s0 = None if s0 is None else torch.as_tensor(s0, dtype=torch.float32).reshape(1, -1)
        self.n_updates = 0
        d, k = policy.obs_dim, policy.act_dim
        self.q = TwinQ(d, k, cfg.critic_hidden, cfg.act)
        self.q_targ = copy.deepcopy(self.q)
        for p in self.q_targ.parameters():
            p.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), requires_grad=True)
        self.target_entropy = -float(k) if cfg.target_entropy is None else cfg.target_entropy
        # foreach: one fused call per tensor list instead of a Python loop per parameter (bitwise the
        # same updates; about half the optimiser's time at these sizes on a 2-core CPU)
        self.pi_opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, foreach=True)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=cfg.lr, foreach=True)
        self.a_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.r_range = [math.inf, -math.inf]  # rewards seen by the critic, for ``clip_target``

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def update(self, batch: dict, h, model, pi_penalty=None) -> dict:
        """Lines 1-4 of Algorithm 4 on one minibatch. With ``h`` None this is plain SAC (no mask,
        Q-hat = Q1: the baselines). ``pi_penalty(s, a)``, if given, is added to the policy loss
        per sample (SQRL's nu Q_risk(s, a))."""
        s, a, r, s2, done = batch["s"], batch["a"], batch["r"], batch["s2"], batch["done"]
        alpha = self.alpha.detach()
        # critic (Eq. 11)
        with torch.no_grad():
            a2, logp2 = self.policy.sample(s2)
            q1t, q2t = self.q_targ(s2, a2)
            q_next = torch.min(q1t, q2t)
            if self.cfg.clip_target:
                q_next = q_next.clamp(*self.value_range(r, logp2, alpha))
            target = r + self.cfg.gamma * (1 - done) * (q_next - alpha * logp2)
            mask = (U(h, model, s2, a2) <= 0).float() if h is not None else torch.ones_like(r)
        q1, q2 = self.q(s, a)
        denom = mask.sum().clamp_min(1.0)
        q_loss = ((mask * ((q1 - target) ** 2 + (q2 - target) ** 2)).sum()) / denom
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_opt.step()
        # policy (Eq. 10)
        pa, logp = self.policy.sample(s)
        q1p, _ = self.q(s, pa)
        if h is not None:
            u = U(h, model, s, pa)
            q_hat = self.q_hat(q1p, u)
        else:
            u, q_hat = torch.zeros_like(q1p), q1p
        pi_loss = (alpha * logp - q_hat).mean()
        if pi_penalty is not None:
            pi_loss = pi_loss + pi_penalty(s, pa).mean()
        info = {}
        self.n_updates += 1
        if self.cfg.model_horizon > 0 and self.n_updates % self.cfg.model_every == 0:
            start = self.s0 if self.cfg.model_start == "s0" else s[: self.cfg.model_batch]
            ret = self.model_return(start, model, h if self.cfg.model_masked else None)
            pi_loss = pi_loss - ret.mean()
            info["model_return"] = float(ret.detach().mean())
        self._policy_step(pi_loss)
        # temperature (Eq. 12)
        if self.cfg.learn_alpha:
            a_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.a_opt.zero_grad(set_to_none=True)
            a_loss.backward()
            self.a_opt.step()
        # target networks (line 7)
        soft_update(self.q_targ, self.q, self.cfg.tau)
        return {"q_loss": float(q_loss.detach()), "pi_loss": float(pi_loss.detach()), "alpha": float(alpha),
                "certified_frac": float((u <= 0).float().mean()) if h is not None else math.nan,
                "mask_frac": float(mask.mean()), **info}

    def q_hat(self, value: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Eq. (10)'s mask: ``value`` where U(s, a, h) <= 0, -C - U(s, a, h) elsewhere."""
        return torch.where(u <= 0, value, -self.cfg.big_c - u)

    def model_return(self, s: torch.Tensor, model, h=None) -> torch.Tensor:
        """sum_{t<H} gamma^t r(s_t) + gamma^H min Q(s_H, pi(s_H)) for the mean policy from each s,
        through the ensemble's mean prediction (``model_horizon``), differentiable in the policy.
        With ``h``, masked like Eq. (10)'s Q-hat: the first step whose action has U(s_t, a_t, h) > 0
        ends the rollout with -C - U there, so the term never rewards leaving C_h."""
        x, ret, disc = s, torch.zeros(len(s)), 1.0
        alive = torch.ones(len(s))
        for _ in range(self.cfg.model_horizon):
            a = self.policy.mean_action(x)
            r = torch.as_tensor(self.reward(x), dtype=torch.float32)
            if h is not None:  # Q-hat along the rollout; nothing counts after the first exit
                u = U(h, model, x, a)
                r = alive * self.q_hat(r, u)
                alive = alive * (u <= 0).float()
            ret = ret + disc * r
            x = model.means(x, a).mean(0)
            disc *= self.cfg.gamma
        a = self.policy.mean_action(x)
        q = torch.min(*self.q(x, a))
        if h is not None:
            u = U(h, model, x, a)
            q = self.q_hat(q, u)
        return ret + disc * alive * q

    def value_range(self, r: torch.Tensor, logp: torch.Tensor, alpha: torch.Tensor) -> tuple[float, float]:
        """Bounds of a soft value under the rewards seen so far (``clip_target``, see above)."""
        self.r_range = [min(self.r_range[0], float(r.min())), max(self.r_range[1], float(r.max()))]
        g = 1.0 / (1.0 - self.cfg.gamma)
        a = float(alpha)
        lo = (self.r_range[0] - a * max(float(logp.max()), 0.0)) * g
        hi = (self.r_range[1] + a * self.policy.act_dim * math.log(2.0)) * g
        return lo, hi

    def adversarial_step(self, s_star: torch.Tensor, h, model, coef: float = 1.0,
                         anchor: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> float:
        """Line 6 of Algorithm 4: minimise mean U(s*, pi(s*), h) over the policy's parameters.
        ``anchor`` = (states, actions, beta) adds beta * mean ||mu(states) - actions||^2, a proximal
        term that keeps the mean policy where it was away from s* (a departure; paper: none)."""
        if len(s_star) == 0:
            return float("nan")
        u = U(h, model, s_star, self.policy.mean_action(s_star))
        loss = coef * u.mean()
        if anchor is not None:
            states, actions, beta = anchor
            loss = loss + beta * (self.policy.mean_action(states) - actions).pow(2).sum(-1).mean()
        self._policy_step(loss)
        return float(u.detach().max())

    def _policy_step(self, loss: torch.Tensor) -> None:
        """One Adam step of the policy on ``loss``, with gradients for the policy's parameters only
        (none land on Q or the model the loss was computed through)."""
        params = list(self.policy.parameters())
        grads = torch.autograd.grad(loss, params)
        self.pi_opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.pi_opt.step()

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "q": self.q.state_dict(),
                "q_targ": self.q_targ.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "pi_opt": self.pi_opt.state_dict(), "q_opt": self.q_opt.state_dict(),
                "a_opt": self.a_opt.state_dict(), "r_range": torch.tensor(self.r_range, dtype=torch.float64),
                "n_updates": self.n_updates}

    def load_state_dict(self, d: dict) -> None:
        self.policy.load_state_dict(d["policy"])
        self.q.load_state_dict(d["q"])
        self.q_targ.load_state_dict(d["q_targ"])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        self.pi_opt.load_state_dict(d["pi_opt"])
        self.q_opt.load_state_dict(d["q_opt"])
        self.a_opt.load_state_dict(d["a_opt"])
        self.n_updates = int(d.get("n_updates", 0))
        if "r_range" in d:  # absent from checkpoints written before clip_target existed
            self.r_range = [float(v) for v in d["r_range"]]
