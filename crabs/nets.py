"""Neural networks shared by the parts of CRABS: plain MLPs, a running input normaliser, the
tanh-Gaussian policy of Sec. 4.1 / Appendix B, and an ensemble MLP that evaluates all K dynamics
models in one batched matmul (Sec. 4.3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh}


def activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, act: str = "relu") -> nn.Sequential:
    """in -> hidden[0] -> ... -> out, with ``act`` between layers and a linear output."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), activation(act)()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- target + tau (source - target), parameter by parameter, in one foreach call."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class Normalizer(nn.Module):
    """Fixed-after-fit affine input normalisation ``(x - mean) / std``, stored as buffers so that it
    travels with the weights. ``fit`` sets it from data (the release normalises inputs of f and of
    the dynamics models by the replay data's statistics)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.mean)
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0, unbiased=False).clamp_min(self.eps) if len(x) > 1
                       else torch.ones_like(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TanhGaussianPolicy(nn.Module):
    """pi(s) = tanh(mu(s)) (the safeguard / mean policy) and pi_expl(s) = tanh(mu(s) + sigma(s) zeta),
    zeta ~ N(0, I) (Sec. 4.1). One MLP trunk outputs mu and log sigma."""

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64),
                 act: str = "relu"):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.act = obs_dim, act_dim, tuple(hidden), act
        self.net = mlp(obs_dim, hidden, 2 * act_dim, act)

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(s).chunk(2, dim=-1)
        return mu, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def mean_action(self, s: torch.Tensor) -> torch.Tensor:
        """The deterministic policy pi(s) = tanh(mu(s))."""
        return torch.tanh(self.forward(s)[0])

    def sample(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised a ~ pi_expl(s) and its log-density (with the tanh correction)."""
        mu, log_std = self.forward(s)
        std = log_std.exp()
        z = mu + std * torch.randn_like(mu)
        a = torch.tanh(z)
        logp = (-0.5 * ((z - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log(1 - tanh(z)^2), numerically stable form
        logp = logp - (2 * (math.log(2) - z - nn.functional.softplus(-2 * z))).sum(-1)
        return a, logp

    def spec(self) -> dict:
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": list(self.hidden),
                "act": self.act}


class EnsembleLinear(nn.Module):
    """K independent linear layers applied to a (K, B, in) batch with one ``baddbmm``."""

    def __init__(self, k: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(k, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """K MLPs of identical shape evaluated together: input (K, B, in) -> (K, B, out)."""

    def __init__(self, k: int, in_dim: int, hidden: Sequence[int], out_dim: int, act: str = "silu"):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [EnsembleLinear(k, d, h), activation(act)()]
            d = h
        layers.append(EnsembleLinear(k, d, out_dim))
        self.net = nn.Sequential(*layers)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
