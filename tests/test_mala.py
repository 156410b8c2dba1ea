"""MALA (Alg. 5) samples known densities, with the target acceptance, inside a constraint."""

import math

import torch

from crabs.mala import mala_init, mala_step


def gaussian_fn(mu, sigma, constraint=None):
    def fn(x):
        logp = -(((x - mu) / sigma) ** 2).sum(-1) / 2
        grad = -(x - mu) / sigma**2
        inside = torch.ones(len(x), dtype=torch.bool) if constraint is None else constraint(x)
        return logp, grad, inside
    return fn


def run(fn, x0, steps, gen, precond=None):
    st = mala_init(x0, fn, 0.5)
    rates, samples = [], []
    for t in range(steps):
        st, info = mala_step(st, fn, gen, target_accept=0.574, adapt_rate=0.02, precond=precond)
        if t >= steps // 2:
            rates.append(info.accept_rate)
            samples.append(st.x.clone())
    return st, sum(rates) / len(rates), torch.cat(samples)


def test_mala_samples_anisotropic_gaussian_with_target_acceptance():
    gen = torch.Generator().manual_seed(0)
    mu, sigma = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 3.0], dtype=torch.float64)
    x0 = torch.zeros(2000, 2, dtype=torch.float64)
    _, rate, xs = run(gaussian_fn(mu, sigma), x0, 600, gen, precond=sigma)
    assert abs(rate - 0.574) < 0.03
    torch.testing.assert_close(xs.mean(0), mu, atol=0.05 * sigma.max(), rtol=0)
    torch.testing.assert_close(xs.std(0), sigma, rtol=0.05, atol=0)


def test_mala_respects_constraint_half_normal():
    """Standard normal restricted to x0 >= 0: E[x0] = sqrt(2/pi); proposals outside are rejected."""
    gen = torch.Generator().manual_seed(1)
    fn = gaussian_fn(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                     constraint=lambda x: x[:, 0] >= 0)
    x0 = torch.rand(2000, 2, generator=gen, dtype=torch.float64)
    _, _, xs = run(fn, x0, 600, gen)
    assert (xs[:, 0] >= 0).all()
    assert abs(float(xs[:, 0].mean()) - math.sqrt(2 / math.pi)) < 0.03
    assert abs(float(xs[:, 1].std()) - 1.0) < 0.05


def test_mh_correction_is_the_standard_one():
    """With the release's -|zeta|^2 forward term the stationary variance would be wrong; with the
    standard correction a large step still samples N(0, 1) exactly (checked at tau ~ 1)."""
    gen = torch.Generator().manual_seed(2)
    fn = gaussian_fn(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    st = mala_init(torch.zeros(4000, 1, dtype=torch.float64), fn, 0.9)
    xs = []
    for t in range(400):
        st, _ = mala_step(st, fn, gen, adapt_rate=0.0)
        if t > 100:
            xs.append(st.x)
    xs = torch.cat(xs)
    assert abs(float(xs.var()) - 1.0) < 0.04
