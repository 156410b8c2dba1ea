"""The barrier certificate h (Sec. 3) and its adversarial training (Alg. 1, Eq. 2-5, Lemma 1).

    h(s) = 1 - softplus(f(s) - f(s0)) - B_safe(s)

holds R.1 (h(s0) = 1 - log 2 > 0) and R.2 (h < 1 - B_safe <= 0 outside the safe set) for any
weights of f. R.3 is trained: with U(s, a, h) = max_{s' in T_hat(s, a)} -h(s') (Eq. 1) and
C* = max_{s in C_h} U(s, pi(s), h) (Eq. 2), the certificate descends the gradient of Lemma 1 at the
adversarial states s* found by MALA (mala.py).

Sign of Eq. (4). The paper writes the constraint both as ``h(s) >= 0`` (C_h) and ``h(s) <= 1``
(App. A), and Eq. (4) as ``grad U - lambda grad h``, which is Lemma 1 for a constraint g <= 0 with
g = h. For C_h = {h >= 0}, Lemma 1 applies with g = -h, and the gradient is

    grad_phi C* = grad_phi U(s*) + lambda grad_phi h(s*),  lambda = |grad_s U(s*)| / |grad_s h(s*)|

(the authors' release stores g = -h and uses ``grad U - lambda grad g``, the same thing).
``tests/test_barrier.py`` checks this against finite differences of C* on a toy problem.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from crabs.config import BarrierConfig
from crabs.envs.spec import SafetySpec
from crabs.nets import mlp


class Barrier(nn.Module):
    """h(s) = 1 - softplus(f(s) - f(s0)) - B_safe(s) [- B_box(s)]; f sees states scaled by ``scale``
    (the state box's half-widths), so its input is O(1) whatever the units.

    With ``cfg.box_barrier`` (a departure; the paper has no such term) and a state box ``low`` /
    ``high``, B_box(s) = max_i w((s_i - c_i) / r_i), the B_safe of App. C.1 (with its margin)
    applied to the box, keeps C_h inside the box where the adversary searches: otherwise
    unconstrained coordinates (the cart-pole's speeds) could be certified beyond it, where no
    adversary ever looks.

    ``shape`` is the part of 1 - h between s0 and the safety terms; a subclass may replace it (and
    ``make_f``), as the fixed certificate of ``barrier.learn: false`` does (crabs/handcrafted.py)."""

    def __init__(self, spec: SafetySpec, cfg: BarrierConfig, scale: torch.Tensor,
                 low=None, high=None):
        super().__init__()
        self.spec = spec
        self.f = self.make_f(spec, cfg)
        self.register_buffer("s0", torch.as_tensor(spec.s0, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.box = bool(cfg.box_barrier and low is not None and high is not None)
        if self.box:
            low = torch.as_tensor(low, dtype=torch.float32)
            high = torch.as_tensor(high, dtype=torch.float32)
            self.register_buffer("box_center", (high + low) / 2)
            self.register_buffer("box_radius", (high - low) / 2)
        # the edge pad (``barrier.edge_factor``): per constrained coordinate, in units of its limit,
        # how far inside the limit C_h must stay; 0 is the paper's B_safe
        self.register_buffer("pad", torch.zeros(len(spec.constrained_index)))

    def make_f(self, spec: SafetySpec, cfg: BarrierConfig) -> nn.Module | None:
        """The trained part of h: the network f (a subclass with a fixed h returns None)."""
        return mlp(spec.dim, cfg.hidden, 1, cfg.act)

    @classmethod
    def for_box(cls, spec: SafetySpec, cfg: BarrierConfig, low, high) -> Barrier:
        """The certificate of a system whose states live in the box [low, high] (f sees states in
        units of its half-widths)."""
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        return cls(spec, cfg, torch.as_tensor((high - low) / 2, dtype=torch.float32), low, high)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # certificates saved before the edge pad existed had none: a pad of 0
        state_dict.setdefault(prefix + "pad", torch.zeros_like(self.pad))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def B_safe(self, s: torch.Tensor) -> torch.Tensor:
        """B_safe of App. C.1 with each limit moved inwards by the edge pad: C_h keeps
        |z_j| <= 1 - pad_j, so a real next state that lies within pad_j (in units of the limit) of
        the model's prediction for a state of C_h is safe."""
        return self.spec.B_safe_torch(s, self.pad)

    @torch.no_grad()
    def widen_pad(self, pad: torch.Tensor) -> bool:
        """Raise the edge pad to at least ``pad`` (per constrained coordinate; it never shrinks).
        Returns whether it grew: C_h then shrank and R.3 must be re-established."""
        new = torch.maximum(self.pad, torch.as_tensor(pad, dtype=self.pad.dtype))
        grew = bool((new > self.pad).any())
        self.pad.copy_(new)
        return grew

    def B_box(self, s: torch.Tensor) -> torch.Tensor:
        z = ((s - self.box_center) / self.box_radius).abs()
        return torch.relu(100.0 * (z - 1.0 + self.spec.margin)).amax(dim=-1)  # > 1 outside: h < 0

    def f_rel(self, s: torch.Tensor) -> torch.Tensor:
        both = torch.cat([s.reshape(-1, s.shape[-1]), self.s0[None]], 0) / self.scale
        out = self.f(both).squeeze(-1)
        return (out[:-1] - out[-1]).reshape(s.shape[:-1])

    @torch.no_grad()
    def dilate(self, delta: float) -> None:
        """Scale f(s) - f(s0) by 1 - delta (the output layer's weights): C_h grows to a larger level
        set of f in h's own shape (``barrier.regrow_mode = "dilate"``). R.1 and R.2 still hold."""
        if not 0.0 <= delta < 1.0:
            raise ValueError(f"dilation must be in [0, 1), got {delta}")
        self.f[-1].weight.mul_(1.0 - delta)

    def shape(self, s: torch.Tensor) -> torch.Tensor:
        """The part of 1 - h that is not a safety term: softplus(f(s) - f(s0)) > 0, log 2 at s0."""
        return F.softplus(self.f_rel(s))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = 1.0 - self.shape(s) - self.B_safe(s)
        return h - self.B_box(s) if self.box else h


def U(h: Barrier, model, s: torch.Tensor, a: torch.Tensor, region_std: float | None = None) -> torch.Tensor:
    """Eq. (1): U(s, a, h) = max over the K predicted next states s' of -h(s'). Shape s.shape[:-1].

    With ``dynamics.support_radius`` r > 0 (a departure; the paper trusts the ensemble everywhere)
    U is also at least ``10 (d - r)``, d the distance of s' from the training data in box
    half-widths: the ensemble is confidently wrong far from its data (bench/RESULTS.md), so a
    prediction leaving the data's neighbourhood counts as leaving C_h.

    With ``dynamics.region_std`` c > 0 (a departure; the paper's region is the K means) each
    member's point is moved to the corner of its box mean_i +- c sigma_i (sigma_i the member's
    predicted std, Eq. 6) where the linearised h is lowest, s' = mean_i - c sigma_i sign(grad h):
    the truth lay outside the K means' range on 40-97% of Move's and Swing's new data
    (docs/config.md). ``region_std`` overrides c for this call (Alg. 3's ``explore.region_std``)."""
    c = getattr(getattr(model, "cfg", None), "region_std", 0.0) if region_std is None else region_std
    if c > 0:
        nxt, std = model.means_and_stds(s, a)
        with torch.enable_grad():
            p = nxt.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(h(p).sum(), p)
        nxt = nxt - c * std * torch.sign(g)
    else:
        nxt = model.means(s, a)
    u = (-h(nxt)).amax(dim=0)
    r = getattr(getattr(model, "cfg", None), "support_radius", 0.0)
    if r > 0 and getattr(model, "support", None) is not None:
        u = torch.maximum(u, 10.0 * (model.support_distance(nxt).amax(dim=0) - r))
    return u


def U_pi(h: Barrier, model, policy, s: torch.Tensor) -> torch.Tensor:
    """U(s, pi(s), h) with pi the deterministic (mean) policy."""
    return U(h, model, s, policy.mean_action(s))


def lemma1_lambda(h: Barrier, model, policy, s: torch.Tensor, min_grad: float = 1e-6) -> torch.Tensor:
    """lambda_i = |grad_s U(s_i)| / |grad_s h(s_i)| (Eq. 9), per adversarial state; no graph kept."""
    x = s.detach().requires_grad_(True)
    gu = torch.autograd.grad(U_pi(h, model, policy, x).sum(), x)[0]
    gh = torch.autograd.grad(h(x).sum(), x)[0]
    return gu.norm(dim=-1) / gh.norm(dim=-1).clamp_min(min_grad)


def certificate_loss(h: Barrier, model, policy, s_star: torch.Tensor, h_prev: Barrier | None = None,
                     s_reg: torch.Tensor | None = None, reg_coef: float = 0.0,
                     min_grad: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """Eq. (5): the Lemma-1 surrogate of C* averaged over the adversarial states, whose gradient in
    phi is grad U(s*) + lambda grad h(s*) (Eq. 4, sign as in the module docstring), plus
    ``reg_coef * mean relu(h_prev(s) - h(s))`` over the candidates (Sec. 4.2). One forward pass
    serves lambda (gradients in s) and the loss (gradients in phi)."""
    x = s_star.detach().requires_grad_(True)
    u = U_pi(h, model, policy, x)
    hv = h(x)
    gu = torch.autograd.grad(u.sum(), x, retain_graph=True)[0]
    gh = torch.autograd.grad(hv.sum(), x, retain_graph=True)[0]
    lam = (gu.norm(dim=-1) / gh.norm(dim=-1).clamp_min(min_grad)).detach()
    loss = (u + lam * hv).mean()
    info = {"lambda": float(lam.mean()), "U_max": float(u.detach().max())}
    if h_prev is not None and s_reg is not None and reg_coef > 0:
        with torch.no_grad():
            ref = h_prev(s_reg)
        reg = F.relu(ref - h(s_reg)).mean()
        loss = loss + reg_coef * reg
        info["reg"] = float(reg.detach())
    return loss, info


class CertificateTrainer:
    """Adam on Eq. (5) for the parameters of f only (model and policy are held fixed)."""

    def __init__(self, h: Barrier, cfg: BarrierConfig):
        self.h, self.cfg = h, cfg
        params = list(h.parameters())
        # a fixed h (the handcrafted certificate, ``barrier.learn: false``) has nothing to train
        self.opt = torch.optim.Adam(params, lr=cfg.lr, foreach=True) if params else None

    def step(self, model, policy, s_star: torch.Tensor, h_prev: Barrier | None,
             s_reg: torch.Tensor | None) -> dict:
        if self.opt is None:
            raise RuntimeError("this certificate has no parameters to train (barrier.learn: false)")
        loss, info = certificate_loss(self.h, model, policy, s_star, h_prev, s_reg, self.cfg.reg_coef)
        self.opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss, list(self.h.parameters()), allow_unused=True)
        for p, g in zip(self.h.parameters(), grads):
            p.grad = g
        self.opt.step()
        return info

    def snapshot(self) -> Barrier:
        """A frozen copy (h-hat of Sec. 4.2, or a rollback point)."""
        c = copy.deepcopy(self.h)
        for p in c.parameters():
            p.requires_grad_(False)
        return c

    def state_dict(self) -> dict:
        return {"h": self.h.state_dict(), "opt": self.opt.state_dict() if self.opt is not None else {}}

    def load_state_dict(self, d: dict) -> None:
        self.h.load_state_dict(d["h"])
        if self.opt is not None:
            self.opt.load_state_dict(d["opt"])


def fit_certificate(h: Barrier, states: torch.Tensor, positive: torch.Tensor, steps: int = 1000,
                    lr: float = 1e-3, margin: float = 0.1, batch: int = 1024,
                    gen: torch.Generator | None = None) -> dict:
    """Supervised initialisation of f: hinge losses pushing h >= margin on ``positive`` states and
    h <= -margin on the others. R.1/R.2 hold whatever comes out; R.3 is then trained by Alg. 1."""
    opt = torch.optim.Adam(h.parameters(), lr=lr)
    sign = positive.float() * 2 - 1
    for _ in range(steps):
        idx = torch.randint(len(states), (min(batch, len(states)),), generator=gen)
        loss = F.relu(margin - sign[idx] * h(states[idx]))
        # balance the two classes
        w = torch.where(positive[idx], 0.5 / positive[idx].float().mean().clamp_min(1e-3),
                        0.5 / (~positive[idx]).float().mean().clamp_min(1e-3))
        loss = (w * loss).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float(((h(states) >= 0) == positive).float().mean())
    return {"fit_accuracy": acc}
