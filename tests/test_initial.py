"""The shipped safe initial policies are safe (0 violations) and deliberately low-reward."""

import numpy as np
import pytest

from crabs.envs import MonitorCounters, get_task, make_env
from crabs.initial import initial_policy, load_policy, policy_path
from crabs.rollout import mean_actor, rollout, run_episode

EPISODES = 20


@pytest.mark.parametrize("task,low,high", [("upright", -3.0, -0.3), ("tilt", -60.0, -25.0),
                                           ("move", 0.0, 5.0), ("swing", 0.0, 0.5)])
def test_shipped_initial_policy_is_safe(task, low, high):
    assert policy_path(task).exists()
    policy = initial_policy(task)
    env = make_env(task)
    eps = rollout(env, policy, EPISODES)
    assert env.counters.violations == 0 and env.counters.episodes == EPISODES
    assert all(e.length == get_task(task).spec.horizon for e in eps)
    # trivial reward: far from the best (Upright best -0.216, Tilt -2.33, Move ~670, Swing >= 20)
    assert low < eps[0].ret < high


@pytest.mark.parametrize("task,starts", [
    ("upright", [[0.2, 0.5], [-0.3, 0.3], [0.35, -1.0], [-0.5, 2.0]]),
    ("move", [[0.3, 0.05, 0.0, 0.0], [-0.4, -0.05, 0.2, 0.0], [0.0, 0.1, 0.0, -0.3]]),
    ("swing", [[0.3, 0.2, 0.0, 0.0], [-0.3, -0.15, 0.0, 0.3]]),
])
def test_initial_policy_recovers_from_perturbed_starts(task, starts):
    """A certificate can only grow around a policy that is safe from more than s0."""
    env = make_env(task)
    act = mean_actor(initial_policy(task))
    for s in starts:
        ep = run_episode(env, act, options={"state": s})
        assert not ep.violated, s
        assert np.abs(ep.states[-1][:2]).max() < 0.05  # back near the equilibrium


def test_policy_file_loads_weights_only():
    policy, meta = load_policy(policy_path("swing"))
    assert meta["task"] == "swing" and policy.hidden == (64, 64)


def test_other_shape_is_distilled_on_the_fly():
    policy = initial_policy("upright", hidden=(16,), act="relu")
    env = make_env("upright")
    ep = run_episode(env, mean_actor(policy))
    assert policy.hidden == (16,) and not ep.violated


@pytest.mark.parametrize("task", ["upright", "tilt", "move", "swing"])
def test_startup_noise_of_the_default_configs_is_safe(task, tmp_path):
    """Start-up episodes (before any certificate exists) use the initial policy with noise inside a
    small region; with each task's default config this stays safe over many episodes."""
    from crabs.config import load_config
    from crabs.explore import StartupActor
    from crabs.runs import RunDir
    from crabs.system import builtin_system

    cfg = load_config(task=task)
    system = builtin_system(task)
    actor = StartupActor(system.initial_policy, system.state_low, system.state_high, cfg.init_noise,
                         cfg.init_noise_region, np.random.default_rng(cfg.seed))
    env = RunDir(tmp_path).monitor(system, MonitorCounters(), "startup")
    n = 30 if task in ("upright", "tilt") else 12
    for _ in range(n):
        run_episode(env, actor)
    env.close()
    assert env.counters.episodes == n and env.counters.violations == 0
