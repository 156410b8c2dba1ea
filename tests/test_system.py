"""Bringing your own system: validation of what CRABS is given (the config's own checks: test_config.py)."""

import gymnasium as gym
import numpy as np
import pytest

from crabs.envs import SafetySpec
from crabs.envs.monitor import SafetyMonitor
from crabs.nets import TanhGaussianPolicy
from crabs.system import System, builtin_system

SPEC = SafetySpec(("theta", "theta_dot"), {"theta": 1.0}, (0.0, 0.0), 100)


def make(**kw):
    args = dict(name="mine", make_env=lambda: gym.make("crabs/Upright-v0"), spec=SPEC,
                initial_policy=TanhGaussianPolicy(2, 1, (8,)), state_low=[-1, -5], state_high=[1, 5])
    args.update(kw)
    return System(**args)


def test_valid_system():
    s = make(state_low=(-1, -5))       # any sequence becomes a float64 array, as given
    assert s.state_low.dtype == np.float64 and s.state_low.tolist() == [-1.0, -5.0]
    assert s.state_high.tolist() == [1.0, 5.0] and s.spec is SPEC


def test_an_s0_on_the_state_box_edge_is_warned_of():
    """R.1 needs s0 inside C_h, which the certificate keeps inside the box by the spec's margin: an s0
    on a bound of the box (a user's natural choice for a physical limit) is said at once."""
    with pytest.warns(UserWarning, match=r"s0 lies on the state box's edge \(theta = 0 in \[-1, 0\]\).*"
                                         r"R.1 fails at s0"):
        make(state_low=[-1, -5], state_high=[0, 5])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(state_low=[-1, -5], state_high=[0.05, 5])   # s0 inside by more than the margin: silent


@pytest.mark.parametrize("kw,msg", [
    ({"state_low": [-1, -5, 0]}, "shape"),
    ({"state_low": [1, 5], "state_high": [-1, -5]}, "exceed"),
    ({"initial_policy": TanhGaussianPolicy(3, 1, (8,))}, "3-D states"),
    ({"state_low": [0.5, -5]}, "s0 lies outside"),
])
def test_invalid_system(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make(**kw)


def test_a_controller_function_is_not_a_policy():
    with pytest.raises(TypeError, match=r"crabs.initial.distill\(controller, state_low, state_high\)"):
        make(initial_policy=lambda s: -s[..., :1])


def test_builtin_system_matches_task():
    s = builtin_system("move")
    assert s.spec.dim == 4 and s.initial_policy.hidden == (64, 64)
    np.testing.assert_allclose(s.state_high[:2], [0.9, 0.2])


def test_known_actuator_saturation_reaches_the_model(tmp_path):
    """The cart-poles' control is clip(3a, -1, 1): actions beyond +-1/3 act as +-1/3. The built-in
    systems declare it, the model sees the clipped action (dynamics.saturate_actions, default) and
    so predicts the same next state for a = 0.5 and a = 1; the paper's raw-action model does not."""
    import pytest
    import torch

    from crabs.config import Config
    from crabs.loop import CRABS
    from crabs.system import System, builtin_system

    assert builtin_system("swing").action_bound == pytest.approx(1 / 3)
    assert builtin_system("move", max_ctrl=3.0).action_bound == pytest.approx(1.0)
    assert builtin_system("upright").action_bound is None
    s = torch.zeros(3, 4)
    a = torch.tensor([[0.1], [0.5], [1.0]])
    for i, saturate in enumerate((True, False)):
        c = CRABS(builtin_system("swing"), Config.from_dict({"task": "swing", "dynamics": {
            "saturate_actions": saturate}}), tmp_path / str(i), progress=False)
        with torch.no_grad():
            m = c.model.means(s, a)
        same = torch.allclose(m[:, 1], m[:, 2])
        assert same == saturate and not torch.allclose(m[:, 0], m[:, 1])
    sys_ = builtin_system("upright")
    with pytest.raises(ValueError, match="action_bound must lie in"):
        System(sys_.name, sys_.make_env, sys_.spec, sys_.initial_policy, sys_.state_low,
               sys_.state_high, action_bound=1.5)


def test_the_environment_is_checked_before_any_step():
    """Observations must be the state, actions a Box holding [-1, 1] of the policy's size and a reset
    must give s0 (checked on the monitor's own resets, not by an extra one): one-line errors naming
    the fix; a wider Box only warns (the policy uses [-1, 1] of it)."""
    from crabs.envs import make_state_env

    def step(s, a):
        return np.asarray(s, float) + 0.05 * np.asarray(a, float)[..., :1]

    spec = SafetySpec(("x",), {"x": 1.0}, (0.0,), 10)
    env = make_state_env(spec, step, lambda s: 0.0, act_dim=1)
    system = make(spec=spec, initial_policy=TanhGaussianPolicy(1, 1, (8,)), state_low=[-1], state_high=[1])
    system.check_env(env)   # the built-in convention passes
    with pytest.raises(ValueError, match=r"RescaleAction\(env, -1.0, 1.0\)"):
        system.check_env(gym.wrappers.RescaleAction(env, 0.0, 1.0))       # [0, 1]: half of it unusable
    with pytest.warns(UserWarning, match=r"wider than \[-1, 1\]; CRABS's policies act in \[-1, 1\] only"):
        system.check_env(gym.wrappers.RescaleAction(env, -2.0, 2.0))
    two = make(spec=spec, initial_policy=TanhGaussianPolicy(1, 2, (8,)), state_low=[-1], state_high=[1])
    with pytest.raises(ValueError, match="gives 2 action"):
        two.check_env(env)
    with pytest.raises(ValueError, match=r"must be the state, 2 coordinates \['theta', 'theta_dot'\]"):
        make().check_env(env)
    class Noisy(gym.Wrapper):   # a reset with noise, as most Gymnasium environments have by default
        resets = 0

        def reset(self, *, seed=None, options=None):
            Noisy.resets += 1
            obs, info = self.env.reset(seed=seed, options=options)
            return obs + 0.01, info
    system.check_env(Noisy(env))    # the static checks make no reset: every reset is the monitor's
    assert Noisy.resets == 0
    monitor = SafetyMonitor(Noisy(env), spec, start_check=system.check_start)
    with pytest.raises(ValueError, match=r"reset gives \[0.01\], but episodes must start at the spec's "
                                         r"s0 \[0.0\]"):
        monitor.reset()
    assert monitor.counters.env_steps == 0 and Noisy.resets == 1
    monitor.reset(options={"state": np.array([0.5])})    # a start asked for is not s0's business
    monitor.step(np.zeros(1))
    for task in ("upright", "swing"):   # the built-in tasks pass as they are
        builtin = builtin_system(task)
        builtin_env = builtin.make_env()
        builtin.check_env(builtin_env)
        builtin.check_start(builtin_env.reset(seed=3)[0])
        builtin_env.close()


def test_training_refuses_an_environment_it_cannot_act_in_before_any_step(tmp_path):
    """crabs.train on a system whose environment takes actions in [0, 1]: the one-line error comes
    before start-up takes a step (no episode, no step in the ledger)."""
    import crabs
    from crabs.config import Config
    from crabs.envs import ledger_totals, make_state_env, read_ledger

    def step(s, a):
        return np.asarray(s, float) + 0.05 * np.asarray(a, float)[..., :1]

    spec = SafetySpec(("x",), {"x": 1.0}, (0.0,), 10)
    def make_env():
        return gym.wrappers.RescaleAction(make_state_env(spec, step, lambda s: 0.0, 1), 0.0, 1.0)

    system = make(spec=spec, initial_policy=TanhGaussianPolicy(1, 1, (8,)), state_low=[-1], state_high=[1],
                  make_env=make_env)
    with pytest.raises(ValueError, match="does not hold"):
        crabs.train(system, Config(), out=tmp_path / "run", progress=False)
    ledger = tmp_path / "run" / "ledger.jsonl"
    assert not ledger.exists() or ledger_totals(read_ledger(ledger)).env_steps == 0
