"""The four tasks match Sec. 5 / Appendix C.1 of the paper."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import crabs  # noqa: F401  (registers crabs/... ids)
from crabs.envs import TASKS, SafetySpec, get_task
from crabs.envs.pendulum import THETA_LIM, pendulum_step

IDS = {"upright": "crabs/Upright-v0", "tilt": "crabs/Tilt-v0", "move": "crabs/Move-v0",
       "swing": "crabs/Swing-v0"}


@pytest.mark.parametrize("task", list(IDS))
def test_make_s0_horizon_spaces(task):
    env = gym.make(IDS[task])
    obs, _ = env.reset(seed=123)
    expected = (0.3, -0.9) if task in ("upright", "tilt") else (0.0, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(obs, expected)  # deterministic s0, no reset noise
    assert env.spec.max_episode_steps == (200 if task in ("upright", "tilt") else 1000)
    assert env.action_space.shape == (1,)
    assert env.action_space.low[0] == -1 and env.action_space.high[0] == 1


def test_theta_lim_is_where_full_torque_balances_gravity():
    assert pytest.approx(-0.41151684, abs=1e-8) == THETA_LIM
    assert 15 * math.sin(-THETA_LIM) == pytest.approx(6.0)  # 3g/(2l) sin = 3/(ml^2) * 2
    # held at theta_lim by full torque a = +1: the speed stays 0
    nxt = pendulum_step(np.array([THETA_LIM, 0.0]), np.array([1.0]))
    assert abs(nxt[1]) < 1e-12


def test_pendulum_dynamics_formula():
    s = np.array([0.3, -0.9])
    nxt = pendulum_step(s, np.array([0.5]))
    thdot = -0.9 + (15 * math.sin(0.3) + 3 * 2 * 0.5) * 0.05
    np.testing.assert_allclose(nxt, [0.3 + thdot * 0.05, thdot])
    # speed clipped at 8 after the angle update (Pendulum-v0 order)
    fast = pendulum_step(np.array([0.0, 7.99]), np.array([1.0]))
    assert fast[1] == 8.0 and fast[0] == pytest.approx((7.99 + 0.3) * 0.05)


@pytest.mark.parametrize("task,expect", [("upright", -0.09), ("tilt", -(THETA_LIM - 0.3) ** 2)])
def test_pendulum_rewards_of_current_state(task, expect):
    env = gym.make(IDS[task])
    env.reset()
    _, r, term, trunc, info = env.step(np.array([0.0], dtype=np.float32))
    assert r == pytest.approx(expect)
    assert not term and not trunc and info["cost"] == 0.0


@pytest.mark.parametrize("task", ["move", "swing"])
def test_cartpole_reward_and_action_scaling(task):
    env = gym.make(IDS[task])
    env.reset(options={"state": [0.5, 0.1, 0.0, 0.0]})
    _, r, *_ = env.step(np.array([0.0]))
    assert r == pytest.approx(0.25 if task == "move" else 0.01)
    base = env.unwrapped
    # clip(3a, -1, 1): a = 0.2 -> ctrl 0.6; a = 1 -> ctrl 1 (100 N), not 3
    base.reset()
    base.step(np.array([0.2]))
    assert base.data.ctrl[0] == pytest.approx(0.6)
    base.step(np.array([1.0]))
    assert base.data.ctrl[0] == pytest.approx(1.0)


def test_cartpole_full_force_option_and_bad_value():
    env = gym.make("crabs/Swing-v0", max_ctrl=3.0)
    env.reset()
    env.unwrapped.step(np.array([1.0]))
    assert env.unwrapped.data.ctrl[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="max_ctrl"):
        gym.make("crabs/Swing-v0", max_ctrl=5.0)


def test_cartpole_no_builtin_termination_at_02():
    # Swing allows |theta| up to 1.5: InvertedPendulum-v5 would stop at 0.2
    env = gym.make("crabs/Swing-v0")
    env.reset(options={"state": [0.0, 0.3, 0.0, 0.0]})
    _, _, term, _, info = env.step(np.array([0.0]))
    assert not term and info["cost"] == 0.0


@pytest.mark.parametrize("task,state", [("upright", [1.49, 3.0]), ("move", [0.0, 0.199, 0.0, 2.0]),
                                         ("swing", [0.899, 0.0, 3.0, 0.0])])
def test_violation_terminates_with_minus_30(task, state):
    env = gym.make(IDS[task])
    env.reset(options={"state": state})
    _, r, term, _, info = env.step(np.array([1.0 if task == "upright" else 0.0]))
    assert term and r == -30.0 and info["cost"] == 1.0


def test_unknown_task_message():
    with pytest.raises(ValueError, match="unknown task 'cartwheel'; choose from upright"):
        get_task("cartwheel")


@pytest.mark.parametrize("task", list(TASKS))
def test_B_safe_boundary_inside_outside(task):
    spec = get_task(task).spec
    s = np.zeros(spec.dim)
    assert spec.B_safe(s) == 0.0
    for i, zmax in zip(spec.constrained_index, spec.constrained_max):
        on = s.copy()
        on[i] = zmax
        assert spec.B_safe(on) == pytest.approx(1.0)  # = 1 on the boundary
        assert spec.is_safe(on)
        inside = s.copy()
        inside[i] = -0.99 * zmax
        assert spec.B_safe(inside) == pytest.approx(0.0, abs=1e-9)
        out = s.copy()
        out[i] = -1.001 * zmax
        assert spec.B_safe(out) > 1.0 and not spec.is_safe(out)


def test_B_safe_paper_literal_margin():
    spec = SafetySpec(("theta", "theta_dot"), {"theta": 1.5}, (0.3, -0.9), 200, margin=0.0)
    assert spec.B_safe(np.array([1.5, 0.0])) == 0.0
    assert spec.B_safe(np.array([1.5 * 1.02, 0.0])) == pytest.approx(2.0)


@pytest.mark.parametrize("task", list(TASKS))
def test_torch_and_numpy_safety_functions_agree(task):
    t = get_task(task)
    low, high = t.box()
    rng = np.random.default_rng(0)
    s = rng.uniform(1.2 * low, 1.2 * high, size=(5000, len(low)))
    np.testing.assert_allclose(t.spec.B_safe_torch(torch.as_tensor(s)).numpy(), t.spec.B_safe(s),
                               rtol=1e-12, atol=1e-12)
    st32 = t.spec.B_safe_torch(torch.as_tensor(s, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(st32, t.spec.B_safe(s), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(t.spec.is_safe_torch(torch.as_tensor(s)).numpy(), t.spec.is_safe(s))
    assert t.spec.is_safe(s).any() and not t.spec.is_safe(s).all()


def test_spec_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown state coordinates"):
        SafetySpec(("a",), {"b": 1.0}, (0.0,), 10)
    with pytest.raises(ValueError, match="outside the safe set"):
        SafetySpec(("a",), {"a": 1.0}, (2.0,), 10)
    with pytest.raises(ValueError, match="last dimension"):
        get_task("upright").spec.B_safe(np.zeros(3))
    assert not get_task("upright").spec.is_safe(np.array([np.nan, 0.0]))


def test_env_rejects_nan_action():
    env = gym.make("crabs/Upright-v0")
    env.reset()
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan]))
