"""The development systems of crabs.examples: built through the public API, safe initial policies
(also from perturbed starts and under CRABS's start-up noise), true environments that audit like the
built-in tasks', and a strong controller whose return (REFERENCE_RETURN) clearly beats the initial
policy's."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from crabs.envs import SafetyMonitor
from crabs.examples import DESCRIPTIONS, EXAMPLES
from crabs.examples.common import run_controller
from crabs.rollout import mean_actor, rollout, run_episode
from crabs.system import System

NAMES = list(EXAMPLES)

# perturbed starts inside a small region around the equilibrium, and where the initial policy
# settles from them (coordinates checked, tolerance)
PERTURBED = {
    "heavy_pendulum": [[0.2, 0.5], [-0.3, 0.3], [0.5, -1.0], [-0.5, 1.0], [0.6, 0.0]],
    "lane_car": [[0.6, 0.3, 0.5], [-0.7, -0.3, 1.0], [0.8, 0.0, 1.5], [0.0, 0.5, 1.8], [-0.5, 0.2, 0.0]],
    "long_cartpole": [[0.5, 0.05, 0.0, 0.0], [-0.5, -0.05, 0.3, 0.0], [0.0, 0.1, 0.0, -0.2],
                      [1.0, 0.0, -0.3, 0.1], [-1.0, -0.1, 0.0, 0.2]],
}
SETTLED = {
    "heavy_pendulum": ([0.0, 0.0], 0.05),
    "lane_car": ([0.0, 0.0, 0.25], 0.05),         # centre line, straight, at the slow speed
    "long_cartpole": ([0.0, 0.0, 0.0, 0.0], 0.05),
}
# a safe state from which full action (+1 on every action) leaves the safe set at once
DOOMED = {
    "heavy_pendulum": [0.99, 2.0],
    "lane_car": [0.99, 0.5, 1.95],
    "long_cartpole": [1.49, 0.0, 0.99, 0.0],
}


@pytest.fixture(scope="module")
def systems():
    return {name: EXAMPLES[name].make_system() for name in NAMES}


def test_the_examples_are_listed_with_one_line_each():
    assert set(EXAMPLES) == set(DESCRIPTIONS) == {"heavy_pendulum", "lane_car", "long_cartpole"}
    for name, mod in EXAMPLES.items():
        assert mod.__name__ == f"crabs.examples.{name}" and "\n" not in DESCRIPTIONS[name]
        assert mod.__doc__ and callable(mod.make_system) and callable(mod.strong_controller)
    assert not [k for k in gym.registry if any(n in k.lower() for n in NAMES)]  # nothing registered


@pytest.mark.parametrize("name", NAMES)
def test_make_system_builds(name, systems):
    mod, system = EXAMPLES[name], systems[name]
    assert isinstance(system, System) and system.name == name
    env = system.make_env()
    k = env.action_space.shape[0]
    assert system.initial_policy.obs_dim == system.spec.dim == len(system.state_low)
    assert system.initial_policy.act_dim == k == (2 if name == "lane_car" else 1)
    assert np.asarray(mod.controller(system.spec.s0_array())).shape == (k,)
    # the box matches the safe set on the constrained coordinates
    idx, zmax = system.spec.constrained_index, system.spec.constrained_max
    np.testing.assert_allclose(system.state_high[idx], zmax)
    np.testing.assert_allclose(system.state_low[idx], -zmax)
    # a fresh policy per system (training one does not touch another's)
    other = mod.make_system()
    assert other.initial_policy is not system.initial_policy
    assert all(torch.equal(a, b) for a, b in zip(other.initial_policy.state_dict().values(),
                                                 system.initial_policy.state_dict().values()))


@pytest.mark.parametrize("name", NAMES)
def test_initial_policy_is_safe_from_s0(name, systems):
    system = systems[name]
    env = SafetyMonitor(system.make_env(), system.spec)
    eps = rollout(env, system.initial_policy, 10)
    assert env.counters.violations == 0 and env.counters.episodes == 10
    assert all(e.length == system.spec.horizon and not e.violated for e in eps)


@pytest.mark.parametrize("name", NAMES)
def test_initial_policy_recovers_from_perturbed_starts(name, systems):
    system = systems[name]
    env = SafetyMonitor(system.make_env(), system.spec)
    act = mean_actor(system.initial_policy)
    target, tol = SETTLED[name]
    for s in PERTURBED[name]:
        assert system.spec.is_safe(np.asarray(s))
        ep = run_episode(env, act, options={"state": s})
        assert not ep.violated and ep.length == system.spec.horizon, s
        np.testing.assert_allclose(ep.states[-1], target, atol=tol, err_msg=str(s))
    assert env.counters.violations == 0


@pytest.mark.parametrize("name", NAMES)
def test_startup_noise_of_the_default_config_is_safe(name, systems):
    """CRABS's start-up episodes (the initial policy, noisy near the box's centre) with Config()."""
    from crabs.config import Config
    from crabs.explore import StartupActor

    cfg, system = Config(), systems[name]
    actor = StartupActor(system.initial_policy, system.state_low, system.state_high, cfg.init_noise,
                         cfg.init_noise_region, np.random.default_rng(cfg.seed))
    env = SafetyMonitor(system.make_env(), system.spec)
    for _ in range(5):
        run_episode(env, actor)
    assert env.counters.episodes == 5 and env.counters.violations == 0
    assert actor.noisy > 0   # the noise acted: the episodes did enter init_noise_region


@pytest.mark.parametrize("name", NAMES)
def test_env_follows_the_built_in_tasks_conventions(name):
    mod = EXAMPLES[name]
    env = mod.make_env()
    k = env.action_space.shape[0]
    s0, _ = env.reset()
    np.testing.assert_array_equal(s0, mod.SPEC.s0_array())
    # observation = the state; reward r of the state the step starts from
    a = np.full(k, 0.3)
    s1, r, term, trunc, info = env.step(a)
    np.testing.assert_allclose(s1, mod.step(s0, a))
    assert r == pytest.approx(float(mod.reward(s0))) and not term and not trunc and info["cost"] == 0.0
    # reset(options={"state": s}) starts there, as `crabs verify` needs
    s = np.asarray(PERTURBED[name][1], dtype=np.float64)
    got, _ = env.reset(options={"state": s})
    np.testing.assert_array_equal(got, s)
    np.testing.assert_allclose(env.step(a)[0], mod.step(s, a))
    # a violation ends the episode with -30 and cost 1
    env.reset(options={"state": DOOMED[name]})
    s2, r, term, _, info = env.step(np.ones(k))
    assert not mod.SPEC.is_safe(s2) and r == -30.0 and term and info["cost"] == 1.0
    # the horizon ends an episode
    env.reset()
    n, trunc = 0, False
    while not trunc:
        _, _, term, trunc, _ = env.step(np.asarray(mod.controller(env.unwrapped.state)))
        assert not term
        n += 1
    assert n == mod.SPEC.horizon
    # the reward works on torch tensors too (sac.model_horizon)
    states = np.random.default_rng(0).uniform(mod.STATE_LOW, mod.STATE_HIGH, size=(8, mod.SPEC.dim))
    np.testing.assert_allclose(mod.reward(torch.as_tensor(states)).numpy(), mod.reward(states))


@pytest.mark.parametrize("name", NAMES)
def test_strong_controller_is_safe_and_clearly_beats_the_initial_policy(name, systems):
    mod, system = EXAMPLES[name], systems[name]
    strong = run_controller(mod.make_env, mod.SPEC, mod.strong_controller)
    assert not strong.violated and strong.length == mod.SPEC.horizon
    assert strong.ret == pytest.approx(mod.REFERENCE_RETURN, abs=1e-3)  # the constant is current
    init = run_controller(mod.make_env, mod.SPEC, mean_actor(system.initial_policy))
    assert not init.violated
    assert strong.ret - init.ret > 0.5 * (abs(strong.ret) + abs(init.ret)), (strong.ret, init.ret)
    for s in PERTURBED[name]:  # the yardstick is safe from the perturbed starts too
        assert not run_controller(mod.make_env, mod.SPEC, mod.strong_controller, s).violated, s


def test_state_env_builds_an_env_from_equations():
    """StateEnv / make_state_env on a 1-D toy x' = x + 0.5 a, r(x) = x, safe |x| <= 1, horizon 5."""
    from crabs.envs import SafetySpec, StateEnv, make_state_env

    spec = SafetySpec(state_names=("x",), limits={"x": 1.0}, s0=(0.1,), horizon=5)

    def toy_step(s, a):
        return np.asarray(s, dtype=np.float64) + 0.5 * np.asarray(a, dtype=np.float64)

    def toy_reward(s):
        return s[..., 0]

    env = make_state_env(spec, toy_step, toy_reward, 1, violation_penalty=7.0)
    inner = env.unwrapped
    assert isinstance(inner, StateEnv) and inner.spec_safety is spec
    assert env.action_space.shape == (1,) and np.isinf(env.observation_space.high).all()
    s, _ = env.reset()
    np.testing.assert_array_equal(s, [0.1])
    s, _ = env.reset(options={"state": [0.4]})
    np.testing.assert_array_equal(s, [0.4])
    s, r, term, trunc, info = env.step(np.array([0.2]))
    np.testing.assert_allclose(s, [0.5])
    assert r == pytest.approx(0.4) and not term and not trunc and info["cost"] == 0.0  # r of the start
    env.reset(options={"state": [0.8]})
    s, r, term, _, info = env.step(np.array([1.0]))
    assert s[0] == pytest.approx(1.3) and r == -7.0 and term and info["cost"] == 1.0
    env.reset()
    ends = [env.step(np.zeros(1))[2:4] for _ in range(spec.horizon)]
    assert ends == [(False, False)] * (spec.horizon - 1) + [(False, True)]
    for bad in ([0.1, 0.2], [np.nan]):
        with pytest.raises(ValueError, match="action must be one finite number, got"):
            env.step(np.asarray(bad))
    for k, words in ((2, "two finite numbers"), (3, "three finite numbers")):
        with pytest.raises(ValueError, match=f"action must be {words}, got"):
            StateEnv(spec, toy_step, toy_reward, k).step(np.zeros(1))
    bounded = StateEnv(spec, toy_step, toy_reward, 1, obs_high=[2.0])
    np.testing.assert_array_equal(bounded.observation_space.high, [2.0])
    # the examples are built on it, with their own observation bounds
    for mod in EXAMPLES.values():
        inner = mod.make_env().unwrapped
        assert isinstance(inner, StateEnv) and inner.spec_safety is mod.SPEC
    high = EXAMPLES["heavy_pendulum"].make_env().observation_space.high
    np.testing.assert_array_equal(high, [np.inf, EXAMPLES["heavy_pendulum"].MAX_SPEED])


def test_cli_trains_and_verifies_a_system_of_ones_own(tmp_path, monkeypatch, capsys):
    """``crabs train --system MODULE[:FUNCTION]``: a user's System under the default Config() (with
    --set and --epochs on top); one-line errors for a missing module, function or a non-System."""
    import crabs.loop
    from crabs.cli import main
    from crabs.config import Config

    seen = {}

    def fake_train(system, cfg, out, **kw):
        seen.update(system=system, cfg=cfg)
        return {"violations": 0}

    monkeypatch.setattr(crabs.loop, "train", fake_train)
    assert main(["train", "--system", "crabs.examples.heavy_pendulum", "--epochs", "3", "--set",
                 "sac.tau=0.01", "--out", str(tmp_path / "r")]) == 0
    assert seen["system"].name == "heavy_pendulum"
    assert seen["cfg"] == Config().replace(epochs=3, sac={"tau": 0.01})   # the default Config()
    capsys.readouterr()
    for ref, msg in [("crabs.examples.nothing", "cannot import 'crabs.examples.nothing'"),
                     ("crabs.examples.lane_car:nothing", "has no function 'nothing'"),
                     ("crabs.examples.lane_car:controller", "returned a ndarray, not a System")]:
        if ref.endswith(":controller"):   # a function that needs an argument: called wrongly
            monkeypatch.setattr("crabs.examples.lane_car.controller", lambda: np.zeros(2))
        assert main(["train", "--system", ref, "--out", str(tmp_path / "x")]) == 2
        assert msg in capsys.readouterr().err
    assert main(["train", "--task", "upright", "--system", "crabs.examples.lane_car",
                 "--out", str(tmp_path / "y")]) == 2
    assert "give --task or --system, not both" in capsys.readouterr().err
