"""Calibrated dynamics ensemble T-hat (Sec. 4.3, Eq. 6, Appendix C.2).

K Gaussian models N(mu_i(s, a), diag sigma_i^2(s, a)) of the residual s' - s, trained by negative
log-likelihood (Eq. 6) on independent minibatches, with learnable soft bounds on log sigma
(Chua et al. 2018; the release's max 0.5 / min -10 and 0.001 * (max - min) penalty). Inputs and
residual targets are normalised. The confidence region is the set of the K means:
``T_hat(s, a) = {s + mu_i(s, a)}_i`` — all K are evaluated in one batched pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from crabs.config import DynamicsConfig
from crabs.nets import EnsembleMLP, Normalizer


class Ensemble(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, cfg: DynamicsConfig):
        super().__init__()
        self.obs_dim, self.act_dim, self.k, self.cfg = obs_dim, act_dim, cfg.k, cfg
        self.in_norm = Normalizer(obs_dim + act_dim)
        self.register_buffer("out_mean", torch.zeros(obs_dim))
        self.register_buffer("out_std", torch.ones(obs_dim))
        self.net = EnsembleMLP(cfg.k, obs_dim + act_dim, cfg.hidden, 2 * obs_dim, cfg.act)
        self.max_log_std = nn.Parameter(torch.full((obs_dim,), cfg.max_log_std))
        self.min_log_std = nn.Parameter(torch.full((obs_dim,), cfg.min_log_std))
        self.register_buffer("fitted", torch.tensor(False))
        self.action_bound: float | None = None     # known actuator saturation, see _input
        self.support: torch.Tensor | None = None   # data states / scale, see set_support
        self.support_scale: torch.Tensor | None = None

    @torch.no_grad()
    def set_support(self, states: torch.Tensor, scale: torch.Tensor, max_points: int = 2048,
                    gen: torch.Generator | None = None) -> None:
        """The states the model was trained on (a random subset of at most ``max_points``), in units
        of ``scale``: with ``support_radius`` > 0 the model is trusted only within that distance."""
        if len(states) > max_points:
            states = states[torch.randperm(len(states), generator=gen)[:max_points]]
        self.support_scale = torch.as_tensor(scale, dtype=torch.float32)
        self.support = states.float() / self.support_scale

    def support_distance(self, s: torch.Tensor) -> torch.Tensor:
        """Max-norm distance (in scale units) from each state of shape (..., obs) to the support."""
        flat = s.reshape(-1, self.obs_dim) / self.support_scale
        d = torch.cdist(flat, self.support, p=float("inf")).amin(-1)
        return d.reshape(s.shape[:-1])

    @torch.no_grad()
    def fit_normalizers(self, s: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> None:
        """Set input/output normalisation from data (on the start-up data, before any training;
        ``refit_normalizers`` moves it later without changing a prediction)."""
        self.in_norm.fit(self._input(s, a))
        m, o = self._residual_stats(s, s2)
        self.out_mean.copy_(m)
        self.out_std.copy_(o)
        self.fitted.fill_(True)

    @staticmethod
    def _residual_stats(s: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the residual targets s' - s (what the output normalisation uses)."""
        d = s2 - s
        return d.mean(0), d.std(0, unbiased=False).clamp_min(1e-6)

    @torch.no_grad()
    def refit_normalizers(self, s: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> None:
        """Re-centre the input and residual normalisation on ``(s, a, s2)`` without changing any
        prediction: the first layer absorbs the change of input scale, the last layer and the
        log-std bounds the change of output scale (``dynamics.refit_normalizers``). Fitted once on
        the start-up data, the statistics describe a small region around s0: a Swing state of the
        swinging policy was 4-12 start-up stds from it (docs/config.md)."""
        if not bool(self.fitted):
            return self.fit_normalizers(s, a, s2)
        first, last = self.net.net[0], self.net.net[-1]
        mu0, sd0 = self.in_norm.mean.clone(), self.in_norm.std.clone()
        self.in_norm.fit(self._input(s, a))
        mu1, sd1 = self.in_norm.mean, self.in_norm.std
        first.bias += (((mu1 - mu0) / sd0) @ first.weight)[:, None]  # (K, 1, h) += (in,) @ (K, in, h)
        first.weight *= (sd1 / sd0)[None, :, None]
        m0, o0 = self.out_mean.clone(), self.out_std.clone()
        m1, o1 = self._residual_stats(s, s2)
        n = self.obs_dim
        last.weight[..., :n] *= o0 / o1
        last.bias[..., :n] = last.bias[..., :n] * (o0 / o1) + (m0 - m1) / o1
        shift = torch.log(o0 / o1)                                  # log std moves by this
        last.bias[..., n:] += shift
        self.max_log_std += shift
        self.min_log_std += shift
        self.out_mean.copy_(m1)
        self.out_std.copy_(o1)

    def _input(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The models' input [s, a], with a clipped to +-``action_bound`` when the system declares
        a known actuator saturation (``System.action_bound``, ``dynamics.saturate_actions``)."""
        if self.action_bound is not None:
            a = a.clamp(-self.action_bound, self.action_bound)
        return torch.cat([s, a], -1)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised residual mean and log std for inputs x of shape (K, B, obs+act)."""
        mu, raw = self.net(self.in_norm(x)).chunk(2, dim=-1)
        log_std = self.max_log_std - F.softplus(self.max_log_std - raw)
        log_std = self.min_log_std + F.softplus(log_std - self.min_log_std)
        return mu, log_std

    def means(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The confidence region T_hat(s, a): the K predicted next states, shape (K, *batch, obs)."""
        return self.means_and_stds(s, a)[0]

    def means_and_stds(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K predicted next states and each member's predicted std (Eq. 6's sigma_i, in state
        units), both of shape (K, *batch, obs)."""
        batch = s.shape[:-1]
        x = self._input(s, a).reshape(1, -1, self.obs_dim + self.act_dim)
        mu, log_std = self._stats(x.expand(self.k, -1, -1))
        nxt = s.reshape(1, -1, self.obs_dim) + self.out_mean + self.out_std * mu
        std = self.out_std * log_std.exp()
        return nxt.reshape(self.k, *batch, self.obs_dim), std.reshape(self.k, *batch, self.obs_dim)

    def nll(self, s: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Eq. (6) for batches of shape (K, B, .), one minibatch per model; plus the bound penalty."""
        mu, log_std = self._stats(self._input(s, a))
        target = (s2 - s - self.out_mean) / self.out_std
        inv_var = torch.exp(-2 * log_std)
        nll = (((mu - target) ** 2) * inv_var + 2 * log_std).mean()
        return nll + self.cfg.bound_coef * (self.max_log_std.sum() - self.min_log_std.sum())


class DynamicsTrainer:
    """Adam on Eq. (6) with the paper's lr / weight decay; bootstrap-free independent minibatches."""

    def __init__(self, model: Ensemble, cfg: DynamicsConfig):
        self.model, self.cfg = model, cfg
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    foreach=True)

    def train(self, buffer, steps: int, gen: np.random.Generator) -> float:
        k, b = self.model.k, self.cfg.batch
        loss = torch.tensor(float("nan"))
        for _ in range(steps):
            idx = gen.integers(0, len(buffer), size=(k, b))
            batch = buffer.index(idx)
            loss = self.model.nll(batch["s"], batch["a"], batch["s2"])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.opt.load_state_dict(d["opt"])


@torch.no_grad()
def prediction_error(model: Ensemble, s: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> dict:
    """How well T_hat predicted real transitions it had not been trained on: RMSE of the ensemble
    mean and, in units of the ensemble's spread, how far the truth lay from the K means."""
    means = model.means(s, a)                       # (K, B, d)
    err = (means.mean(0) - s2).pow(2).sum(-1).sqrt()
    spread = (means.max(0).values - means.min(0).values)
    outside = ((s2 < means.min(0).values) | (s2 > means.max(0).values)).any(-1)
    return {"rmse": float(err.pow(2).mean().sqrt()), "max_err": float(err.max()),
            "spread": float(spread.norm(dim=-1).mean()), "outside_box": float(outside.float().mean())}


@torch.no_grad()
def hull_error(model: Ensemble, s: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Per state coordinate, the largest distance by which a real next state lay outside the range
    of the K members' mean predictions (0 where the truth lay within it): how far the model's
    region (Eq. 1's K means) missed the truth on these transitions. Shape (d,)."""
    if len(s) == 0:
        return torch.zeros(s.shape[-1])
    means = model.means(s, a)                       # (K, B, d)
    lo, hi = means.min(0).values, means.max(0).values
    return (torch.relu(lo - s2) + torch.relu(s2 - hi)).amax(0)


@torch.no_grad()
def member_step(model: Ensemble, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Each member advances its own states: s, a of shape (K, N, .) -> (K, N, obs)."""
    mu, _ = model._stats(model._input(s, a))
    return s + model.out_mean + model.out_std * mu


@torch.no_grad()
def model_safe_rollouts(model: Ensemble, policy, spec, states: torch.Tensor, steps: int,
                        offset: float = 0.0) -> torch.Tensor:
    """True where every ensemble member, rolled out on its own from the state under the mean policy
    (plus a constant action ``offset``, clipped to [-1, 1]), keeps B_safe = 0 (|z| <= 1 - margin on
    every constrained coordinate) for ``steps`` steps. Used to initialise and regrow the
    certificate (the paper pre-trains one but does not say how)."""
    ok = torch.zeros(len(states), dtype=torch.bool)
    alive = torch.arange(len(states))
    s = states[None].expand(model.k, -1, -1).clone()
    for _ in range(steps):
        s = member_step(model, s, (policy.mean_action(s) + offset).clamp(-1, 1))
        keep = (spec.B_safe_torch(s) <= 0).all(0) & torch.isfinite(s).all(-1).all(0)
        alive, s = alive[keep], s[:, keep]  # drop the states that already failed
        if len(alive) == 0:
            return ok
    ok[alive] = True
    return ok
