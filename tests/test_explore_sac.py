"""Algorithm 3 never returns an uncertified action unless it is the safeguard's; the masked SAC
target (Eq. 11) ignores transitions whose next action is not certified."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from crabs.barrier import U
from crabs.config import SACConfig
from crabs.explore import safeguarded_action
from crabs.nets import TanhGaussianPolicy
from crabs.sac import ConstrainedSAC


class BandH(nn.Module):
    """h(s) = 1 - s0^2 : certified band |s0| <= 1."""

    def forward(self, s):
        return 1 - s[..., 0] ** 2


class PushModel:
    """s' = s + (a, 0): the action pushes the first coordinate; K = 2 slightly different models."""

    def means(self, s, a):
        d = torch.cat([a, torch.zeros_like(a)], -1)
        return torch.stack([s + d, s + 1.05 * d])


def pushing_policy() -> TanhGaussianPolicy:
    """A policy whose mean pushes right, out of the band near s0 = 1 (so the safeguard is needed)."""
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(2, 1, (16,))
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias[0] = 2.0
        policy.net[-1].bias[1] = -1.0
    return policy


def test_algorithm3_returns_certified_or_safeguard():
    policy = pushing_policy()
    h, model = BandH(), PushModel()
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    n_guard = n_prop = 0
    for _ in range(400):
        s = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)])
        res = safeguarded_action(s, policy, h, model, n=20, gen=gen)
        u = float(U(h, model, torch.as_tensor(s, dtype=torch.float32)[None],
                    torch.as_tensor(res.action, dtype=torch.float32)[None])[0])
        assert abs(u - res.U) < 1e-5
        if res.safeguard:
            n_guard += 1
            mean = policy.mean_action(torch.as_tensor(s, dtype=torch.float32)).detach().numpy()
            np.testing.assert_allclose(res.action, mean, atol=1e-6)
        else:
            n_prop += 1
            assert u <= 0
    assert n_guard > 0 and n_prop > 0  # both branches were exercised


def test_algorithm3_takes_the_first_certified_proposal():
    """Near the band's edge the widest proposals are refused: the action is the first certified
    one in Algorithm 3's order, not the first proposal and not any later certified one."""
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(2, 1, (16,))
    h, model = BandH(), PushModel()
    s = np.array([0.9, 0.0])   # certified actions: a <= 0.095 (1.05 a <= 0.1)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    res = safeguarded_action(s, policy, h, model, n=100, gen=g1)
    # replay the proposals: the chosen one is the first with U <= 0
    st = torch.as_tensor(s, dtype=torch.float32)[None]
    mu, log_std = policy(st)
    c = torch.logspace(0, -3, 100)
    props = torch.tanh(mu + c[:, None] * log_std.exp() * torch.randn(100, 1, generator=g2))
    u = U(h, model, st.expand(100, -1), props)
    ok = torch.nonzero(u <= 0).flatten()
    first = int(ok[0])
    assert first > 0 and len(ok) > 1   # a refused proposal comes first, a certified one after it
    assert not res.safeguard and res.U <= 0
    np.testing.assert_allclose(res.action, props[first].detach().numpy(), atol=1e-6)


def test_masked_td_target_ignores_uncertified_next_actions():
    """Eq. (11) drops exactly the transitions whose next action is uncertified: their rewards do not
    reach the critic, while the certified ones' rewards do."""
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(2, 1, (16,))
    sac = ConstrainedSAC(policy, SACConfig(critic_hidden=(16,)))
    h, model = BandH(), PushModel()
    n = 64
    s = torch.zeros(n, 2)
    s2 = torch.zeros(n, 2)
    s2[n // 2:, 0] = 5.0  # next states far outside C_h: every a' has U(s', a') > 0
    batch = {"s": s, "a": torch.zeros(n, 1), "r": torch.zeros(n), "s2": s2, "done": torch.zeros(n)}

    def q_after(rewards_of):
        """The critic after one update on ``batch`` with the rewards of rows ``rewards_of`` at 1000."""
        other, sac2 = {**batch, "r": batch["r"].clone()}, copy.deepcopy(sac)
        other["r"][rewards_of] = 1000.0
        torch.manual_seed(1)
        info = sac2.update(other, h, model)
        return sac2.q.state_dict(), info

    q_a, info = q_after([])
    q_masked, _ = q_after(slice(n // 2, None))   # the uncertified half: must not matter
    q_kept, _ = q_after(slice(0, n // 2))        # the certified half: must matter
    # s2 = 0 certifies every a' with |a'| <= 0.95: most of the first half, none of the second
    assert 0.35 < info["mask_frac"] <= 0.5 + 1e-6
    for k in q_a:
        torch.testing.assert_close(q_a[k], q_masked[k])
    assert any(not torch.allclose(q_a[k], q_kept[k]) for k in q_a)


def test_q_hat_penalises_uncertified_policy_actions():
    """Eq. (10): Q-hat is Q where U(s, a) <= 0 and -C - U elsewhere, so the policy loss's gradient
    at an uncertified action is dU/da and pushes the mean back into C_h, faster than plain SAC's
    entropy term alone moves it on the same batch."""
    sac = ConstrainedSAC(pushing_policy(), SACConfig(critic_hidden=(16,), big_c=1000.0))
    q, u = torch.tensor([5.0, 5.0, 5.0]), torch.tensor([-0.1, 0.0, 0.3])
    torch.testing.assert_close(sac.q_hat(q, u), torch.tensor([5.0, 5.0, -1000.3]))

    h, model = BandH(), PushModel()
    s = torch.zeros(256, 2)
    s[:, 0] = 0.9  # near the edge: pushing right by more than 0.095 leaves C_h
    batch = {"s": s, "a": torch.zeros(256, 1), "r": torch.zeros(256), "s2": s.clone(),
             "done": torch.zeros(256)}

    def mean_after(h_used, steps=100):
        policy = pushing_policy()   # mean action tanh(2) = 0.96: U > 0 at s
        sac = ConstrainedSAC(policy, SACConfig(critic_hidden=(16,), big_c=1000.0, lr=3e-3))
        torch.manual_seed(0)
        for _ in range(steps):
            sac.update(batch, h_used, model)
        return float(policy.mean_action(s[:1]).detach()[0, 0])

    assert float(U(h, model, s[:1], pushing_policy().mean_action(s[:1]).detach())[0]) > 0
    constrained, plain = mean_after(h), mean_after(None)
    assert constrained < plain - 0.2, (constrained, plain)


def test_clip_target_keeps_an_overestimating_target_network_from_feeding_the_critic():
    """sac.clip_target: the bootstrap of Eq. (11) is clipped to the soft values the rewards seen
    allow, (r_hi + alpha dim(A) log 2) / (1 - gamma) at most, so an over-estimating target network
    cannot drag Q up; without the clip (the paper's update) Q follows it."""
    h, model = BandH(), PushModel()
    g = torch.Generator().manual_seed(0)
    n = 256
    s = torch.rand(n, 2, generator=g) - 0.5
    batch = {"s": s, "a": torch.rand(n, 1, generator=g) - 0.5, "r": -torch.rand(n, generator=g),
             "s2": s.clone(), "done": torch.zeros(n)}
    q_after = {}
    for clip in (False, True):
        torch.manual_seed(0)
        policy = TanhGaussianPolicy(2, 1, (16,))
        sac = ConstrainedSAC(policy, SACConfig(critic_hidden=(32,), lr=1e-2, tau=0.0, clip_target=clip,
                                               learn_alpha=False))
        with torch.no_grad():
            for q in (sac.q_targ.q1, sac.q_targ.q2):
                q[-1].bias.fill_(1e3)  # a target network that over-estimates by 10^3
        for _ in range(300):
            sac.update(batch, h, model)
        with torch.no_grad():
            q_after[clip] = float(sac.q(batch["s"], batch["a"])[0].mean())
        if clip:
            assert -1.0 <= sac.r_range[0] <= sac.r_range[1] <= 0.0
            lo, hi = sac.value_range(batch["r"], torch.zeros(1), sac.alpha.detach())
            assert hi == pytest.approx((sac.r_range[1] + float(sac.alpha.detach()) * math.log(2.0)) * 100)
            assert lo == pytest.approx(sac.r_range[0] * 100)
    assert q_after[False] > 200  # the paper's update follows the bad target
    bound = 100 * (0.0 + 0.1 * math.log(2.0))  # r <= 0, alpha fixed at 0.1, gamma 0.99
    assert q_after[True] < bound + 1.0


def test_learn_alpha_off_keeps_the_temperature_fixed():
    """sac.learn_alpha: Eq. (12) moves alpha toward the target entropy (the paper's); off, alpha
    stays at init_alpha."""
    h, model = BandH(), PushModel()
    s = torch.zeros(64, 2)
    batch = {"s": s, "a": torch.zeros(64, 1), "r": torch.zeros(64), "s2": s.clone(), "done": torch.zeros(64)}
    for learn in (True, False):
        torch.manual_seed(0)
        sac = ConstrainedSAC(TanhGaussianPolicy(2, 1, (16,)),
                             SACConfig(critic_hidden=(16,), init_alpha=0.01, learn_alpha=learn, lr=1e-2))
        for _ in range(20):
            info = sac.update(batch, h, model)
        moved = abs(float(sac.alpha.detach()) - 0.01) > 1e-4
        assert moved == learn and (learn or info["alpha"] == pytest.approx(0.01))


class UncertainPushModel(PushModel):
    """PushModel whose members also predict a std that grows with |a| (novel actions less sure)."""

    def means_and_stds(self, s, a):
        m = self.means(s, a)
        return m, (0.3 * a.abs()).expand_as(m)


def test_algorithm3_region_std_takes_only_proposals_certified_over_the_sigma_boxes():
    """With ``region_std`` c a proposal is taken only if U over each member's worst corner of
    mean +- c sigma is <= 0; otherwise the safeguard acts, as with the paper's c = 0."""
    policy = pushing_policy()
    h, model = BandH(), UncertainPushModel()
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    taken, guarded_only_by_region = 0, 0
    for _ in range(300):
        s = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)])
        g0 = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
        g1 = torch.Generator().manual_seed(g0.initial_seed())
        plain = safeguarded_action(s, policy, h, model, n=20, gen=g0)
        res = safeguarded_action(s, policy, h, model, n=20, gen=g1, region_std=1.0)
        if not res.safeguard:
            taken += 1
            a = torch.as_tensor(res.action, dtype=torch.float32)[None]
            st = torch.as_tensor(s, dtype=torch.float32)[None]
            assert float(U(h, model, st, a, region_std=1.0)[0]) <= 0
            assert abs(float(U(h, model, st, a, region_std=1.0)[0]) - res.U) < 1e-5
        elif not plain.safeguard:
            guarded_only_by_region += 1
    assert taken > 0 and guarded_only_by_region > 0  # the wider region changed some choices
    with pytest.raises(ValueError, match="region_std"):
        safeguarded_action(np.zeros(2), policy, h, model, region_std=-0.1, gen=gen)
    from crabs.config import Config

    assert Config().explore.region_std == 0.0  # the paper's Alg. 3 is the default
    with pytest.raises(ValueError, match="explore.region_std: must be >= 0"):
        Config.from_dict({"explore": {"region_std": -0.01}})


def test_algorithm3_min_std_floors_the_proposal_noise_and_keeps_the_guarantee():
    """``min_std`` s_min: a_i = tanh(mu + c_i max(sigma, s_min) zeta_i). A near-deterministic policy
    (sigma = e^-6) explores next to its own path only with the floor; every action taken is still
    certified (U <= 0) or the safeguard's."""
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(2, 1, (16,))
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias[0] = 0.0
        policy.net[-1].bias[1] = -6.0          # sigma = 0.0025
    h, model = BandH(), PushModel()
    s = np.array([0.0, 0.0])
    spread = {}
    for floor in (0.0, 0.5):
        g = torch.Generator().manual_seed(3)
        acts = [safeguarded_action(s, policy, h, model, n=100, gen=g, min_std=floor).action[0]
                for _ in range(200)]
        spread[floor] = float(np.std(acts))
    assert spread[0.0] < 0.005 and spread[0.5] > 0.2
    s = np.array([0.9, 0.0])                  # near the band's edge: big proposals leave it
    st = torch.as_tensor(s, dtype=torch.float32)[None]
    c = torch.logspace(0, -3, 100)
    rejected_first = 0
    for seed in range(20):                    # replay the floored proposals: the first certified is taken
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        res = safeguarded_action(s, policy, h, model, n=100, gen=g1, min_std=2.0)
        props = torch.tanh(c[:, None] * 2.0 * torch.randn(100, 1, generator=g2))
        u = U(h, model, st.expand(100, -1), props)
        first = int(torch.nonzero(u <= 0)[0])
        rejected_first += first > 0
        np.testing.assert_allclose(res.action, props[first].numpy(), atol=1e-6)
        assert res.U <= 0 and not res.safeguard
    assert rejected_first > 0                 # some noisiest proposals left the band and were refused
    with pytest.raises(ValueError, match="min_std"):
        safeguarded_action(s, policy, h, model, min_std=-0.1)
    from crabs.config import Config

    assert Config().explore.min_std == 0.0    # the paper's Alg. 3 is the default
    with pytest.raises(ValueError, match="explore.min_std: must be >= 0"):
        Config.from_dict({"explore": {"min_std": -0.01}})


def test_model_return_is_the_H_step_return_of_the_mean_policy_through_the_model():
    """sac.model_horizon H: sum_{t<H} gamma^t r(s_t) + gamma^H min Q(s_H, pi(s_H)), s_{t+1} the
    mean of the K predictions (PushModel: s + (a, 0) and s + (1.05 a, 0))."""
    policy = pushing_policy()
    cfg = SACConfig(critic_hidden=(16,), model_horizon=3, gamma=0.9)

    def reward(s):
        return -s[..., 0] ** 2

    sac = ConstrainedSAC(policy, cfg, reward)
    s = torch.tensor([[0.1, 0.0], [-0.5, 0.2]])
    got = sac.model_return(s, PushModel())
    x, want = s.clone(), torch.zeros(2)
    with torch.no_grad():
        for t in range(3):
            want += 0.9 ** t * reward(x)
            a = policy.mean_action(x)
            x = x + torch.cat([1.025 * a, torch.zeros_like(a)], -1)
        want += 0.9 ** 3 * torch.min(*sac.q(x, policy.mean_action(x)))
    torch.testing.assert_close(got.detach(), want)
    with pytest.raises(ValueError, match="model_horizon > 0 needs the system's reward"):
        ConstrainedSAC(pushing_policy(), cfg)
    from crabs.config import Config
    with pytest.raises(ValueError, match="sac.model_every: must be >= 1"):
        Config.from_dict({"sac": {"model_every": 0}})


def test_model_term_moves_the_policy_toward_a_better_equilibrium():
    """Rewards -(s_0 - 0.5)^2 and a critic that knows nothing (zero Q, zero rewards in the batch):
    with model_horizon the policy's mean action at s_0 = 0 turns to push toward 0.5 (the H-step
    return through the model rises); without it, it does not."""
    def reward(s):
        return -(s[..., 0] - 0.5) ** 2

    s = torch.zeros(64, 2)
    batch = {"s": s, "a": torch.zeros(64, 1), "r": torch.zeros(64), "s2": s.clone(), "done": torch.zeros(64)}
    ends = {}
    for horizon in (0, 5):
        torch.manual_seed(0)
        policy = TanhGaussianPolicy(2, 1, (16,))
        with torch.no_grad():
            policy.net[-1].weight.zero_()
            policy.net[-1].bias[0] = -0.5  # mean action tanh(-0.5): pushing away from 0.5
        sac = ConstrainedSAC(policy, SACConfig(critic_hidden=(16,), model_horizon=horizon, lr=3e-3,
                                               learn_alpha=False, init_alpha=1e-4), reward)
        with torch.no_grad():
            for p in sac.q.parameters():
                p.zero_()
        before = sac.model_return(s[:8], PushModel()).mean() if horizon else None
        for _ in range(200):
            sac.update(batch, BandH(), PushModel())
            with torch.no_grad():  # keep the critic blind: only the model term may teach the policy
                for p in sac.q.parameters():
                    p.zero_()
        ends[horizon] = float(policy.mean_action(s[:1]).detach()[0, 0])
        if horizon:
            assert float(sac.model_return(s[:8], PushModel()).mean()) > float(before)
    # (without the term only the entropy bonus acts, which Adam's normalisation makes visible too)
    assert ends[5] > 0.2 and ends[5] > ends[0] + 0.3


def test_model_term_can_start_at_s0():
    """sac.model_start "s0": the term's model rollouts start at the system's s0 (where every episode,
    and the evaluation's return, starts) instead of at minibatch states; a bad value or a missing s0
    is refused."""
    seen = []

    class Spy(ConstrainedSAC):
        def model_return(self, s, model, h=None):
            seen.append(s.detach().clone())
            return super().model_return(s, model, h)

    def reward(s):
        return -s[..., 0] ** 2

    s = torch.tensor([[0.9, 0.0], [-0.9, 0.0], [0.1, 0.2]])
    batch = {"s": s, "a": torch.zeros(3, 1), "r": torch.zeros(3), "s2": s.clone(), "done": torch.zeros(3)}
    for start, want in (("batch", s[:2]), ("s0", torch.tensor([[0.3, -0.1]]))):
        seen.clear()
        cfg = SACConfig(critic_hidden=(16,), model_horizon=2, model_batch=2, model_start=start)
        Spy(pushing_policy(), cfg, reward, s0=(0.3, -0.1)).update(batch, BandH(), PushModel())
        torch.testing.assert_close(seen[0], want)
    with pytest.raises(ValueError, match="sac.model_start 's0' needs the system's s0"):
        ConstrainedSAC(pushing_policy(), SACConfig(model_horizon=2, model_start="s0"), reward)
    from crabs.config import Config

    assert Config().sac.model_start == "batch"
    with pytest.raises(ValueError, match="sac.model_start: must be 'batch' or 's0', got 'start'"):
        Config.from_dict({"sac": {"model_start": "start"}})


def test_adversarial_step_anchor_keeps_the_policy_where_it_was_away_from_the_violators():
    """Alg. 4 line 6 lowers U at the violating states s*; with ``anchor`` (states, actions, beta) it
    also keeps the mean action elsewhere near its old value, where the plain step drags it along."""
    s_star = torch.tensor([[0.9, 0.0]])          # pushing right from here leaves the band: U > 0
    far = torch.tensor([[-0.9, 0.0]])            # pushing right from here is safe
    result = {}
    for beta in (0.0, 10.0):
        policy = pushing_policy()
        sac = ConstrainedSAC(policy, SACConfig(critic_hidden=(16,), lr=1e-2))
        with torch.no_grad():
            old_far = policy.mean_action(far)
            u0 = float(U(BandH(), PushModel(), s_star, policy.mean_action(s_star)))
        for _ in range(100):
            sac.adversarial_step(s_star, BandH(), PushModel(), 1.0,
                                 anchor=(far, old_far, beta) if beta else None)
        with torch.no_grad():
            u1 = float(U(BandH(), PushModel(), s_star, policy.mean_action(s_star)))
            moved = float((policy.mean_action(far) - old_far).abs().max())
        assert u1 < u0 and u0 > 0
        result[beta] = (u1, moved)
    assert result[0.0][0] <= 0                   # the plain step certifies s* ...
    assert result[0.0][1] > 0.3                  # ... and drags the far action along
    assert result[10.0][1] < 0.1                 # the anchored one keeps it
    assert result[10.0][0] <= 0                  # and still certifies s*
    from crabs.config import Config

    assert Config().sac.adv_anchor == 0.0        # the paper's Alg. 4 is the default
    with pytest.raises(ValueError, match="sac.adv_anchor: must be >= 0"):
        Config.from_dict({"sac": {"adv_anchor": -1.0}})


def test_model_return_with_h_is_masked_like_q_hat():
    """With h, the H-step model return follows Eq. (10)'s Q-hat along the rollout: the first step
    whose action leaves C_h (U > 0) ends it with -C - U there, discounted; nothing after it counts."""
    policy = pushing_policy()                   # mean action tanh(2) = 0.96: leaves the band fast
    cfg = SACConfig(critic_hidden=(16,), model_horizon=4, gamma=0.9, big_c=1000.0)

    def reward(s):
        return -s[..., 0] ** 2

    sac = ConstrainedSAC(policy, cfg, reward)
    h, model = BandH(), PushModel()
    s = torch.tensor([[0.9, 0.0], [-0.9, 0.0]])
    got = sac.model_return(s, model, h).detach()
    with torch.no_grad():
        a0 = policy.mean_action(s)
        u0 = U(h, model, s, a0)
        x1 = s + torch.cat([1.025 * a0, torch.zeros_like(a0)], -1)
        u1 = U(h, model, x1, policy.mean_action(x1))
    assert u0[0] > 0 and u0[1] <= 0 and u1[1] > 0  # the first leaves at t = 0, the second at t = 1
    torch.testing.assert_close(got[0], -1000.0 - u0[0])
    torch.testing.assert_close(got[1], reward(s[1]) + 0.9 * (-1000.0 - u1[1]))
    unmasked = sac.model_return(s, model).detach()
    assert (unmasked > -100).all()              # without h the same rollouts look harmless
    from crabs.config import Config

    assert Config().sac.model_masked is False
    batch = {"s": s, "a": torch.zeros(2, 1), "r": torch.zeros(2), "s2": s.clone(), "done": torch.zeros(2)}
    for masked in (False, True):               # the SAC update passes h to the term only when masked
        sac = ConstrainedSAC(pushing_policy(), SACConfig(critic_hidden=(16,), model_horizon=4, gamma=0.9,
                                                         model_masked=masked, lr=0.0), reward)
        want = sac.model_return(s, model, h if masked else None).detach().mean()
        info = sac.update(batch, h, model)
        assert info["model_return"] == pytest.approx(float(want), rel=1e-5)


def test_startup_actor_counts_its_noisy_steps():
    """Start-up noise acts only within ``region`` of the box's centre; the actor counts the steps
    it perturbed (the run's ``startup_noisy`` divides them by the start-up's steps), and adds no
    noise outside."""
    from crabs.explore import StartupActor
    from crabs.loop import thin_startup

    class Zero(torch.nn.Module):
        def mean_action(self, s):
            return torch.zeros(*s.shape[:-1], 1)

    actor = StartupActor(Zero(), np.array([-1.0, -2.0]), np.array([1.0, 2.0]), 0.5, 0.1,
                         np.random.default_rng(0))
    assert actor(np.array([0.05, -0.15]))[0] != 0.0          # inside (0.1 x the half-widths 1 and 2)
    assert actor(np.array([0.05, 0.25]))[0] == 0.0           # outside in the second coordinate
    assert actor(np.array([0.5, 0.0]))[0] == 0.0             # outside in the first
    assert actor.noisy == 1   # of the three steps above
    assert actor.inside(np.array([-0.1, 0.2])) and not actor.inside(np.array([-0.1, 0.21]))
    said = thin_startup({"startup_noisy": 1 / 3, "startup_s0_noisy": False})
    assert said.startswith(". s0 lies outside init_noise_region") and "(33% of the start-up steps" in said
    assert thin_startup({"startup_noisy": 1 / 3, "startup_s0_noisy": True}) == "" and thin_startup({}) == ""


def test_negative_startup_noise_is_refused():
    from crabs.config import Config

    with pytest.raises(ValueError, match="init_noise_region: must be >= 0, got -0.1"):
        Config().replace(init_noise_region=-0.1)
