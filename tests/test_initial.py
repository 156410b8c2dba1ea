"""The shipped safe initial policies are safe (0 violations) and deliberately low-reward."""

import pickle

import numpy as np
import pytest
import torch

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


class _Payload:
    """An arbitrary object: unpickling it would run code of the file's choosing."""


def test_policy_file_loads_weights_only(tmp_path):
    policy, meta = load_policy(policy_path("swing"))
    assert meta["task"] == "swing" and policy.hidden == (64, 64)
    blob = torch.load(policy_path("swing"), weights_only=True)
    blob["meta"] = {"task": "swing", "extra": _Payload()}   # a file that needs pickle to load
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_policy(tmp_path / "bad.pt")


def test_other_shape_is_distilled_on_the_fly():
    from crabs.initial import controller

    policy = initial_policy("upright", hidden=(16,), act="relu")
    assert policy.hidden == (16,)
    low, high = get_task("upright").box()   # the new shape learnt the task's controller over its box
    s = np.random.default_rng(0).uniform(low, high, size=(2000, 2))
    err = np.abs(mean_actor(policy)(s) - controller("upright")(s))
    assert err.mean() < 0.05, err.mean()
    env = make_env("upright")
    ep = run_episode(env, mean_actor(policy))
    assert not ep.violated


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
    assert actor.noisy > 0   # the noise acted: the episodes did enter init_noise_region


# -- distill: the action dimension comes from the controller ------------------------------------

# sum of all parameters of distill_task("upright", steps=200), computed with the one-action distill
# before it learnt to infer the action dimension: a one-action distillation must not change at all
UPRIGHT_200_FINGERPRINT = 10.979333882900391


def _param_sum(policy) -> float:
    return sum(float(p.detach().double().sum()) for p in policy.parameters())


def test_one_action_distill_is_unchanged():
    from crabs.initial import distill_task

    policy = distill_task("upright", steps=200)
    assert policy.act_dim == 1
    assert abs(_param_sum(policy) - UPRIGHT_200_FINGERPRINT) < 1e-6


def test_one_dimensional_controller_output_is_one_action():
    import torch

    from crabs.initial import controller, distill

    low, high = get_task("upright").box()
    f = controller("upright")
    a = distill(f, low, high, steps=50)
    b = distill(lambda s: f(s)[:, 0], low, high, steps=50)  # (n,) instead of (n, 1)
    assert a.act_dim == b.act_dim == 1
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_box_away_from_zero_is_distilled_around_its_centre():
    """A controller defined only near its box (here [4, 6], NaN below 3) is never asked about states
    around 0, and the policy matches it in the box."""
    from crabs.initial import distill

    def control(s):
        return np.where(s > 3.0, np.clip(5.0 - s, -1.0, 1.0), np.nan)

    policy = distill(control, np.array([4.0]), np.array([6.0]), steps=800, seed=0)
    s = np.linspace(4.2, 5.8, 50)[:, None]
    assert np.abs(mean_actor(policy)(s) - control(s)).max() < 0.1   # raw inputs near 5: a looser fit


def _two_action_controller(s):
    return np.clip(np.stack([-(0.8 * s[:, 0] + 0.3 * s[:, 1]), 0.5 * np.sin(2 * s[:, 0]) - 0.2 * s[:, 2]],
                            axis=-1), -1.0, 1.0)


def test_two_action_controller_gives_a_two_action_policy():
    import torch

    from crabs.initial import distill

    low, high = np.array([-1.0, -2.0, -1.5]), np.array([1.0, 2.0, 1.5])
    policy = distill(_two_action_controller, low, high, steps=1500, seed=0)
    assert policy.obs_dim == 3 and policy.act_dim == 2
    s = np.random.default_rng(0).uniform(low, high, size=(2000, 3))
    err = np.abs(mean_actor(policy)(s) - _two_action_controller(s))
    assert err.shape == (2000, 2)
    assert err.mean() < 0.03 and err.max() < 0.2, (err.mean(), err.max())
    with torch.no_grad():  # and it samples two actions
        a, logp = policy.sample(torch.zeros(5, 3))
    assert a.shape == (5, 2) and logp.shape == (5,)


def _later(bad):
    """A controller that answers one action of zeros at its first call (the probe), then ``bad``."""
    calls = []

    def control(s):
        calls.append(1)
        return np.zeros((len(s), 1)) if len(calls) == 1 else bad(s)

    return control


@pytest.mark.parametrize("control,match", [
    (lambda s: np.zeros((len(s), 2, 1)), "shape"),
    (lambda s: 0.0, "shape"),
    (lambda s: np.zeros(len(s) + 1), "shape"),
    (lambda s: np.zeros((len(s), 0)), "shape"),
    (lambda s: np.full((len(s), 1), np.nan), "non-finite"),
    (_later(lambda s: np.full((len(s), 1), np.inf)), "non-finite"),  # fine at the probe, not in training
    (_later(lambda s: np.zeros((len(s), 2))), "2 actions per state, earlier 1"),
    (lambda s: "left", "array of numbers"),
])
def test_distill_rejects_a_bad_controller_in_one_line(control, match):
    from crabs.initial import distill

    with pytest.raises(ValueError, match=match) as e:
        distill(control, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), steps=20, batch=64)
    assert "\n" not in str(e.value)
