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


def _disk_adversary(refresh_frac):
    """An Adversary on the box [-1, 1]^2 whose C_h is the unit disk and whose U is s_0 (so the
    chains climb towards (1, 0))."""
    from crabs.config import MALAConfig
    from crabs.mala import Adversary

    class Disk(torch.nn.Module):
        s0 = torch.zeros(2)

        def forward(self, s):
            return 1 - (s ** 2).sum(-1)

    adv = Adversary([-1.0, -1.0], [1.0, 1.0], MALAConfig(chains=400, refresh_frac=refresh_frac), seed=0)
    adv._fn = lambda h, model, policy: lambda x: (x[:, 0] / 0.03, torch.tensor([1 / 0.03, 0.0]).expand_as(x),
                                                  h(x) >= 0)
    return Disk(), adv


def test_refresh_redraws_chains_uniformly_in_C_h():
    """mala.refresh_frac: after every step that fraction of the pool is fresh uniform states of
    C_h, so a pool that has collapsed onto one point still covers C_h; 0 (the paper) leaves it."""
    for frac in (0.0, 0.25):
        h, adv = _disk_adversary(frac)
        adv.reset(h, None, None)
        adv.state.x[:] = torch.tensor([0.9, 0.0])         # every chain collapsed onto one mode
        adv.state.tau[:] = 1e-8                           # and (almost) frozen there
        adv.step(h, None, None)
        moved = (adv.state.x - torch.tensor([0.9, 0.0])).norm(dim=-1) > 1e-3
        if frac == 0:
            assert int(moved.sum()) == 0
        else:
            assert abs(int(moved.sum()) - 100) <= 2
            fresh = adv.state.x[moved]
            assert bool((h(fresh) >= 0).all())            # drawn inside C_h
            assert float(fresh[:, 1].std()) > 0.4         # spread over the disk, not near the mode
            torch.testing.assert_close(adv.state.logp[moved], fresh[:, 0] / 0.03)  # re-evaluated


def test_refresh_frac_is_checked():
    import pytest

    from crabs.config import Config

    with pytest.raises(ValueError, match="refresh_frac: must be in"):
        Config.from_dict({"mala": {"refresh_frac": 1.5}})


def test_best_is_the_largest_U_among_chains_inside_C_h():
    h, adv = _disk_adversary(0.0)
    adv.reset(h, None, None)
    adv.state.x[0] = torch.tensor([2.0, 0.0])              # outside the disk: its U must not count
    adv.state.logp[0], adv.state.inside[0] = 2.0 / 0.03, False
    u, x = adv.best()
    inside = adv.state.inside
    assert u == float((adv.state.logp[inside] * 0.03).max()) and u < 1.0 and float(h(x[None])[0]) >= 0
    adv.state.inside[:] = False
    assert adv.best() == (-math.inf, None) and adv.max_U() == -math.inf


def test_verify_adversary_counts_a_counter_example_seen_at_any_step():
    """crabs verify's fresh adversary reports the largest U any chain reached at any step, and the
    state where it did: a chain that stood on a counter-example (U > 0) and moved on still fails R.3
    (where the chains stand at the end, U < 0 everywhere here)."""
    from crabs.verify import adversary_search

    class Scripted:   # the best chain's U at each of three steps; the pool ends on U = -0.5
        low = torch.zeros(2)
        state = True

        def __init__(self):
            self.t = 0

        def step(self, h, model, policy):
            self.t += 1

        def best(self):
            u = (-0.3, 0.02, -0.5)[self.t - 1]
            return u, torch.tensor([float(self.t), u])

        def candidates(self):
            return torch.full((4, 2), -1.0)

    best, seen = adversary_search(Scripted(), None, None, None, 3)
    assert best == 0.02
    assert seen.shape == (3 + 4, 2)
    torch.testing.assert_close(seen[1], torch.tensor([2.0, 0.02]))     # kept for the worst counter-example
