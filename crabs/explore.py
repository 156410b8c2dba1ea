"""Safe exploration with a certified safeguard policy (Algorithm 3, Appendix C.2).

n proposals a_i = tanh(mu(s) + sigma(s) c_i zeta_i) from the exploration policy; the first with
U(s, a_i, h) <= 0 is taken (the paper's "<= 1" is a typo: staying in C_h means U <= 0), else the
safeguard pi(s) = tanh(mu(s)). With ``noise_decay`` the scales c_i fall log-uniformly from 1 to
1e-3 (the authors' release), so the first certified proposal is the most exploratory one.

That choice selects for the model's optimistic errors: of the proposals the model puts inside C_h,
the one taken is the most novel, where the ensemble is least reliable. ``region_std`` c > 0 (a
departure; the paper's is 0) checks the proposals with U over each member's worst corner of
mean_i +- c sigma_i (``barrier.U``) instead, so a proposal is taken only where the model is sure
enough that it stays in C_h; the safeguard's action is taken as before.

``min_std`` s_min > 0 (a departure; the paper's is 0) floors pi_expl's pre-tanh noise scale at
s_min: a_i = tanh(mu + c_i max(sigma, s_min) zeta_i). A SAC policy with a low target entropy
has sigma ~ 0.004, so without it the proposals stay on the policy's own path and the critic never
sees the actions next to it (Tilt seed 3, bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from crabs.barrier import U
from crabs.rollout import Decision, mean_actor


@dataclass
class ExploreResult:
    action: np.ndarray
    safeguard: bool     # the safeguard's action was returned
    U: float            # U(s, action, h) under the model


def lowest(u: torch.Tensor) -> int:
    """The index of the lowest U, a NaN U never being the lowest (argmin alone would pick it)."""
    return int(torch.nan_to_num(u, nan=math.inf).argmin())


@torch.no_grad()
def safeguarded_action(s: np.ndarray, policy, h, model, n: int = 100, noise_decay: bool = True,
                       uniform: bool = False, noise_scale: float = 1.0,
                       gen: torch.Generator | None = None, region_std: float = 0.0,
                       min_std: float = 0.0, fallbacks: Sequence = ()) -> ExploreResult:
    """Algorithm 3 for one state. ``uniform`` draws proposals uniformly from [-1, 1] instead (the
    Swing schedule's random-proposal episodes); ``noise_scale`` widens pi_expl's noise and
    ``min_std`` floors its pre-tanh scale.

    When no proposal is certified the safeguard acts: the paper's is pi(s). With ``fallbacks``
    (policies: the last certified one, the initial one; ``explore.fallback: lowest_U``) the
    safeguard is the first of pi(s) and the fallbacks' actions that is certified from s, and if none
    is, the candidate (proposal or safeguard) with the lowest U."""
    if region_std < 0:
        raise ValueError(f"region_std must be >= 0, got {region_std}")
    if not min_std >= 0:
        raise ValueError(f"min_std must be >= 0, got {min_std}")
    st = torch.as_tensor(s, dtype=torch.float32)[None]
    mu, log_std = policy(st)
    k = mu.shape[-1]
    if uniform:
        props = 2 * torch.rand(n, k, generator=gen) - 1
    else:
        c = torch.logspace(0, -3, n) if noise_decay else torch.ones(n)
        zeta = torch.randn(n, k, generator=gen)
        sigma = log_std.exp().clamp(min=min_std)
        props = torch.tanh(mu + noise_scale * c[:, None] * sigma * zeta)
    c = max(region_std, getattr(getattr(model, "cfg", None), "region_std", 0.0))  # never below U's own
    u = U(h, model, st.expand(n, -1), props, region_std=c)
    ok = torch.nonzero(u <= 0).flatten()
    if len(ok):
        i = int(ok[0])
        return ExploreResult(props[i].double().numpy(), False, float(u[i]))
    a = torch.tanh(mu)
    if not fallbacks:
        return ExploreResult(a[0].double().numpy(), True, float(U(h, model, st, a)[0]))
    safe = torch.cat([a] + [p.mean_action(st) for p in fallbacks])
    u_safe = U(h, model, st.expand(len(safe), -1), safe)
    j = int(torch.nonzero(u_safe <= 0).flatten()[0]) if bool((u_safe <= 0).any()) else None
    if j is not None:
        return ExploreResult(safe[j].double().numpy(), True, float(u_safe[j]))
    allu, alla = torch.cat([u_safe, u]), torch.cat([safe, props])   # none certified: the lowest U
    j = lowest(allu)
    return ExploreResult(alla[j].double().numpy(), True, float(allu[j]))


@torch.no_grad()
def guarded_action(s: np.ndarray, candidates: Sequence, h, model) -> ExploreResult:
    """Defence in depth for a policy that acts without proposals (evaluation): the first of the
    candidate policies' mean actions (the acting policy's first) that is certified from s, else
    the one with the lowest U. ``safeguard`` is True when it is not the first candidate's."""
    st = torch.as_tensor(s, dtype=torch.float32)[None]
    acts = torch.cat([p.mean_action(st) for p in candidates])
    u = U(h, model, st.expand(len(acts), -1), acts)
    ok = torch.nonzero(u <= 0).flatten()
    j = int(ok[0]) if len(ok) else lowest(u)
    return ExploreResult(acts[j].double().numpy(), j > 0, float(u[j]))


# -- the actors of CRABS's real episodes (crabs.rollout.run_episode) ----------------------------
class SafeguardedActor:
    """Alg. 3 at every step: the first proposal the model keeps in C_h, else the safeguard's
    action. ``kind`` "uniform" draws the proposals uniformly (Swing's schedule), ``noise_scale``
    widens pi_expl's noise, ``min_std`` floors it (``explore`` section of the config);
    ``fallbacks`` are the safeguard's other candidate policies (see :func:`safeguarded_action`)."""

    def __init__(self, policy, h, model, cfg, kind: str = "policy", noise_scale: float = 1.0,
                 min_std: float = 0.0, gen: torch.Generator | None = None, fallbacks: Sequence = ()):
        self.policy, self.h, self.model, self.cfg = policy, h, model, cfg
        self.uniform, self.noise_scale, self.min_std, self.gen = kind == "uniform", noise_scale, min_std, gen
        self.fallbacks = fallbacks

    def __call__(self, s: np.ndarray):
        c = self.cfg
        res = safeguarded_action(s, self.policy, self.h, self.model, c.n, c.noise_decay, uniform=self.uniform,
                                 noise_scale=self.noise_scale, gen=self.gen, region_std=c.region_std,
                                 min_std=self.min_std, fallbacks=self.fallbacks)
        return Decision(res.action, res.safeguard, res.U)


class GuardedActor:
    """A policy acting without proposals (evaluation), guarded at every step by
    :func:`guarded_action` over ``candidates`` (the acting policy first)."""

    def __init__(self, candidates: Sequence, h, model):
        self.candidates, self.h, self.model = list(candidates), h, model

    def __call__(self, s: np.ndarray):
        res = guarded_action(s, self.candidates, self.h, self.model)
        return Decision(res.action, res.safeguard, res.U)


class CheckedActor:
    """The mean action of a policy that acts on its own (the last certified one, while the current
    triple is not certified), with U(s, a, h) under the model for the model-failure check."""

    def __init__(self, policy, h, model):
        self.act, self.h, self.model = mean_actor(policy), h, model

    @torch.no_grad()
    def __call__(self, s: np.ndarray):
        a = self.act(s)
        u = float(U(self.h, self.model, torch.as_tensor(s, dtype=torch.float32)[None],
                    torch.as_tensor(a, dtype=torch.float32)[None])[0])
        return Decision(a, True, u)


class StartupActor:
    """Start-up data (before any model or certificate exists): the given safe policy's mean action,
    with Gaussian noise ``noise`` added only while every coordinate is within ``region`` of the
    state box's half-widths around its centre, from where that policy recovers (checked for the
    shipped policies by the tests)."""

    def __init__(self, policy, low: np.ndarray, high: np.ndarray, noise: float, region: float,
                 rng: np.random.Generator):
        self.act, self.noise, self.region, self.rng = mean_actor(policy), noise, region, rng
        self.half, self.center = (high - low) / 2, (high + low) / 2
        self.noisy = 0   # actions with noise (taken inside the region)

    def inside(self, s: np.ndarray) -> bool:
        """Whether the noise acts at ``s``: every coordinate within the region."""
        return bool(np.all(np.abs(s - self.center) <= self.region * self.half))

    def __call__(self, s: np.ndarray) -> np.ndarray:
        a = self.act(s)
        if self.inside(s):
            self.noisy += 1
            a = np.clip(a + self.noise * self.rng.standard_normal(a.shape), -1, 1)
        return a
