"""The certificate: R.1/R.2 by construction, and the Lemma-1 gradient of Eq. (4)."""

import math

import numpy as np
import torch
from torch import nn

from crabs.barrier import Barrier, U_pi, certificate_loss, lemma1_lambda
from crabs.config import BarrierConfig
from crabs.envs import get_task


def test_R1_R2_hold_for_any_weights():
    for task in ("upright", "swing"):
        t = get_task(task)
        low, high = t.box()
        for seed in range(5):
            torch.manual_seed(seed)
            h = Barrier(t.spec, BarrierConfig(hidden=(32, 32)), torch.as_tensor((high - low) / 2))
            for p in h.parameters():  # arbitrary, large weights
                nn.init.normal_(p, std=3.0)
            s0 = torch.as_tensor(t.spec.s0, dtype=torch.float32)
            assert float(h(s0[None])[0].detach()) == pytest_approx(1 - math.log(2))   # R.1
            s = torch.as_tensor(np.random.default_rng(seed).uniform(1.3 * low, 1.3 * high, (20000, len(low))),
                                dtype=torch.float32)
            unsafe = ~t.spec.is_safe_torch(s)
            assert unsafe.sum() > 1000
            assert (h(s)[unsafe] < 0).all()                                     # R.2


def test_box_barrier_keeps_C_h_inside_the_state_box():
    """Swing's speeds are not safety constraints; with box_barrier h < 0 beyond the state box in
    them too (where no adversary searches), and h(s0) is unchanged; the paper's h (False) does not."""
    t = get_task("swing")
    low, high = t.box()
    s = torch.zeros(4000, 4)
    s[:, 2] = torch.linspace(-3, 3, 4000) * float(high[2])  # x_dot far beyond the box
    s[:, 3] = 0.0
    beyond = s[:, 2].abs() > float(high[2])
    inside = s[:, 2].abs() < 0.99 * float(high[2])  # B_box, like B_safe, keeps a 1% margin
    for box in (True, False):
        torch.manual_seed(0)
        h = Barrier(t.spec, BarrierConfig(hidden=(32, 32), box_barrier=box),
                    torch.as_tensor((high - low) / 2), low, high)
        with torch.no_grad():
            nn.init.zeros_(h.f[-1].weight)  # f constant: C_h is everything B_safe allows
            nn.init.zeros_(h.f[-1].bias)
            hv = h(s)
            assert float(h(h.s0[None])[0]) == pytest_approx(1 - math.log(2))
        assert bool((hv[inside] > 0).all())
        assert bool((hv[beyond] < 0).all()) == box


def pytest_approx(x):
    import pytest
    return pytest.approx(x, abs=1e-4)


class DiskH(nn.Module):
    """h_phi(x) = 1 - |x - phi|^2 (C_h: the unit disk centred at phi)."""

    def __init__(self, phi):
        super().__init__()
        self.phi = nn.Parameter(torch.tensor(phi, dtype=torch.float64))

    def forward(self, s):
        return 1 - ((s - self.phi) ** 2).sum(-1)


class LinearModel:
    """One deterministic model s' = A s (the confidence region is a single point)."""

    def __init__(self, A):
        self.A = torch.tensor(A, dtype=torch.float64)

    def means(self, s, a):
        return (s @ self.A.T)[None]


class ZeroPolicy:
    def mean_action(self, s):
        return torch.zeros(*s.shape[:-1], 1, dtype=s.dtype)


def c_star(phi, A, n=200001):
    """C*(phi) = max over the disk of U(x) = |A x - phi|^2 - 1, attained on the boundary."""
    t = np.linspace(0, 2 * np.pi, n)
    x = phi[None] + np.stack([np.cos(t), np.sin(t)], -1)
    v = ((x @ np.asarray(A).T - phi) ** 2).sum(-1) - 1
    i = int(v.argmax())
    return v[i], x[i]


def test_eq4_gradient_matches_finite_differences():
    """grad_phi C* = grad_phi U(s*) + lambda grad_phi h(s*), lambda = |grad_s U| / |grad_s h|."""
    A = [[1.3, 0.4], [-0.2, 0.8]]
    phi = np.array([0.3, -0.5])
    _, x_star = c_star(phi, A)
    h = DiskH(phi)
    loss, _ = certificate_loss(h, LinearModel(A), ZeroPolicy(),
                               torch.tensor(x_star[None], dtype=torch.float64))
    grad = torch.autograd.grad(loss, h.phi)[0].numpy()
    eps = 1e-4
    fd = np.array([(c_star(phi + eps * e, A)[0] - c_star(phi - eps * e, A)[0]) / (2 * eps)
                   for e in np.eye(2)])
    np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=2e-4)
    # the sign as printed in the paper (grad U - lambda grad h) does not match
    x = torch.tensor(x_star[None], dtype=torch.float64)
    g_u = torch.autograd.grad(U_pi(h, LinearModel(A), ZeroPolicy(), x).sum(), h.phi)[0].numpy()
    g_h = torch.autograd.grad(h(x).sum(), h.phi)[0].numpy()
    lam = float(lemma1_lambda(h, LinearModel(A), ZeroPolicy(), x)[0])
    np.testing.assert_allclose(g_u + lam * g_h, fd, rtol=2e-3, atol=2e-4)
    assert np.abs((g_u - lam * g_h) - fd).max() > 0.1


def test_regulariser_only_penalises_shrinking():
    h, h_prev = DiskH([0.0, 0.0]), DiskH([0.5, 0.0])
    s = torch.tensor([[1.2, 0.0], [-0.9, 0.0]], dtype=torch.float64)
    loss, info = certificate_loss(h, LinearModel([[0.5, 0], [0, 0.5]]), ZeroPolicy(),
                                  torch.zeros(1, 2, dtype=torch.float64), h_prev, s, reg_coef=1.0)
    # h(1.2,0) = -0.44 < h_prev = 0.51 -> penalised 0.95; h(-0.9,0) = 0.19 > h_prev = -0.96 -> 0
    assert info["reg"] == pytest_approx((0.51 + 0.44) / 2)


def test_support_radius_makes_unsupported_predictions_uncertified():
    """dynamics.support_radius > 0: a predicted next state farther than r from the data has U > 0
    whatever h says; with r = 0 (the paper) U is Eq. (1) unchanged."""
    from crabs.barrier import U
    from crabs.config import DynamicsConfig
    from crabs.dynamics import Ensemble

    spec = get_task("upright").spec
    h = Barrier(spec, BarrierConfig(), torch.tensor([1.5, 8.0]))
    scale = torch.tensor([1.5, 8.0])
    s = torch.tensor([[0.0, 0.0], [0.9, 0.0]])
    a = torch.zeros(2, 1)
    plain = Ensemble(2, 1, DynamicsConfig())
    base = U(h, plain, s, a)
    model = Ensemble(2, 1, DynamicsConfig(support_radius=0.25))
    model.load_state_dict(plain.state_dict())
    model.set_support(torch.zeros(10, 2), scale)        # the data: only the origin
    with torch.no_grad():
        u = U(h, model, s, a)
    d = model.support_distance(model.means(s, a)).amax(0)
    assert bool(d[0] < 0.25) and bool(d[1] > 0.5)
    torch.testing.assert_close(u[0], torch.maximum(base[0], 10 * (d[0] - 0.25)))
    assert float(u[1]) >= 10 * (float(d[1]) - 0.25) - 1e-5 > 0
    plain.set_support(torch.zeros(10, 2), scale)        # radius 0: support is ignored
    torch.testing.assert_close(U(h, plain, s, a), base)


def test_dilation_grows_C_h_in_its_own_shape():
    """Barrier.dilate (regrow_mode "dilate") scales f - f(s0): h(s0) is unchanged (R.1), every
    state certified before stays certified (away from B_safe's edge band), the set grows, and R.2
    still holds."""
    t = get_task("move")
    low, high = t.box()
    torch.manual_seed(0)
    h = Barrier(t.spec, BarrierConfig(hidden=(32, 32)), torch.as_tensor((high - low) / 2), low, high)
    s = np.random.default_rng(0).uniform(1.2 * low, 1.2 * high, (50000, 4))
    s = torch.as_tensor(s, dtype=torch.float32)
    with torch.no_grad():
        before = h(s) >= 0
        h.dilate(0.3)
        after = h(s) >= 0
        assert float(h(h.s0[None])[0]) == pytest_approx(1 - math.log(2))
    core = t.spec.B_safe_torch(s) == 0
    assert bool((after | ~before | ~core).all())
    assert int(after.sum()) > int(before.sum())
    assert not bool(after[~t.spec.is_safe_torch(s)].any())


def test_dilation_is_checked():
    import pytest

    from crabs.config import Config

    with pytest.raises(ValueError, match="dilation: must be in"):
        Config.from_dict({"barrier": {"dilation": 1.0}})
    with pytest.raises(ValueError, match="regrow_mode: must be"):
        Config.from_dict({"barrier": {"regrow_mode": "grow"}})


def test_region_std_moves_each_member_to_its_worst_box_corner():
    """dynamics.region_std c: for a linear h = w.s + b the worst point of member i's box
    mean_i +- c sigma_i is mean_i - c sigma_i sign(w), so U = max_i [-h(mean_i) + c sum_j |w_j| sigma_ij];
    c = 0 is the paper's U over the K means; the check keeps c >= 0."""
    import pytest

    from crabs.barrier import U
    from crabs.config import Config

    w, b = torch.tensor([0.5, -2.0]), 0.3

    class LinH(nn.Module):
        def forward(self, s):
            return s @ w + b

    means = torch.tensor([[[0.1, 0.2]], [[0.0, -0.1]]])   # K = 2, one state
    stds = torch.tensor([[[0.01, 0.05]], [[0.2, 0.001]]])

    class Model:
        def __init__(self, c):
            self.cfg = type("Cfg", (), {"region_std": c})()

        def means(self, s, a):
            return means

        def means_and_stds(self, s, a):
            return means, stds

    s, a = torch.zeros(1, 2), torch.zeros(1, 1)
    plain = float(U(LinH(), Model(0.0), s, a))
    assert abs(plain - max(-(m @ w + b) for m in means[:, 0]).item()) < 1e-6
    for c in (1.0, 2.5):
        expect = max(float(-(means[i, 0] @ w + b) + c * (w.abs() * stds[i, 0]).sum()) for i in range(2))
        assert abs(float(U(LinH(), Model(c), s, a)) - expect) < 1e-6
        assert float(U(LinH(), Model(c), s, a)) > plain
    assert Config().dynamics.region_std == 0.0  # the paper's region is the default
    with pytest.raises(ValueError, match="dynamics.region_std: must be >= 0"):
        Config.from_dict({"dynamics": {"region_std": -1.0}})


def test_region_std_on_the_ensemble_widens_U_by_the_members_stds():
    """On a real ensemble: means_and_stds gives the same K means as means() and positive stds
    (Eq. 6's sigma_i in state units), and U with region_std c >= U over the means, growing with c."""
    from crabs.barrier import U
    from crabs.config import DynamicsConfig
    from crabs.dynamics import Ensemble

    torch.manual_seed(0)
    h = Barrier(get_task("upright").spec, BarrierConfig(), torch.tensor([1.5, 8.0]))
    model = Ensemble(2, 1, DynamicsConfig())
    with torch.no_grad():  # stds of a trained model (<= e^-3 of the residual scale): small steps,
        model.max_log_std.fill_(-3.0)  # where the linearised worst corner is the worst point
    s, a = torch.randn(64, 2) * 0.3, torch.rand(64, 1) * 2 - 1
    with torch.no_grad():
        m, sd = model.means_and_stds(s, a)
        torch.testing.assert_close(m, model.means(s, a))
        assert sd.shape == m.shape and bool((sd > 0).all())
        us = []
        for c in (0.0, 0.5, 2.0):
            model.cfg.region_std = c
            us.append(U(h, model, s, a))
    assert bool((us[1] >= us[0] - 1e-6).all()) and bool((us[2] >= us[1] - 1e-6).all())
    assert float((us[2] - us[0]).mean()) > 0


def test_refit_normalizers_keeps_every_prediction():
    """dynamics.refit_normalizers: re-centring the ensemble's input and residual normalisation on
    new data leaves the K means and stds unchanged (the layers absorb the change)."""
    from crabs.config import DynamicsConfig
    from crabs.dynamics import Ensemble

    torch.manual_seed(0)
    model = Ensemble(3, 1, DynamicsConfig(hidden=(16, 16)))
    s, a = torch.randn(200, 3) * 0.1, torch.rand(200, 1) * 2 - 1
    model.fit_normalizers(s, a, s + 0.01 * torch.randn(200, 3))
    x, xa = torch.randn(50, 3), torch.rand(50, 1) * 2 - 1
    with torch.no_grad():
        m0, sd0 = model.means_and_stds(x, xa)
    wide = torch.randn(500, 3) * 2 + 0.5
    model.refit_normalizers(wide, torch.rand(500, 1) * 2 - 1, wide + 0.3 * torch.randn(500, 3))
    assert float(model.in_norm.std[0]) > 1.0  # the statistics did change
    with torch.no_grad():
        m1, sd1 = model.means_and_stds(x, xa)
    torch.testing.assert_close(m1, m0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sd1, sd0, rtol=1e-4, atol=1e-7)


def test_edge_pad_keeps_C_h_inside_the_limits_by_the_pad():
    """barrier.edge_factor's pad p_j: h < 0 wherever |z_j| > 1 - p_j, so a prediction in C_h lies
    at least p_j (in units of the limit) inside it; h(s0) and the unpadded coordinates unchanged;
    the pad only grows; a certificate saved before the pad existed loads with pad 0."""
    t = get_task("upright")
    low, high = t.box()
    h = Barrier(t.spec, BarrierConfig(hidden=(32, 32)), torch.as_tensor((high - low) / 2))
    theta_max = float(t.spec.constrained_max[0])
    s = torch.zeros(2001, 2)
    s[:, 0] = torch.linspace(-1, 1, 2001) * theta_max
    old = h.state_dict()
    before = h(s).detach()
    assert (before[s[:, 0].abs() < 0.98 * theta_max] > -1).any()
    assert not h.widen_pad(torch.zeros(1))                      # nothing to widen
    assert h.widen_pad(torch.tensor([0.1]))
    after = h(s).detach()
    assert (after[s[:, 0].abs() > 0.9 * theta_max] < 0).all()   # the outer tenth is not in C_h
    inner = s[:, 0].abs() < 0.8 * theta_max
    assert torch.equal(after[inner], before[inner])              # far from the limit nothing moved
    assert not h.widen_pad(torch.tensor([0.05]))                # it never shrinks
    assert float(h.pad[0]) == pytest_approx(0.1)
    old.pop("pad")
    h.load_state_dict(old)                                       # a version-2 checkpoint's h
    assert float(h.pad[0]) == 0.0 and torch.equal(h(s).detach(), before)
