"""Systems unlike the built-in ones, brought in through the README's own-system API (equations ->
``make_state_env``, a controller -> ``distill``, a ``System``), trained end to end with the tests'
reduced config and audited: a 1-D state and a system with three actions, whose shapes the four
tasks (2-D and 4-D states, one action) never exercise."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny import TINY

import crabs
from crabs.config import Config
from crabs.envs import SafetySpec, make_state_env
from crabs.initial import distill
from crabs.system import System
from crabs.verify import verify_run


def integrator():
    """x' = x + 0.05 a, |x| <= 1, from x = 0.5; the reward pulls toward the limit."""
    spec = SafetySpec(("x",), {"x": 1.0}, (0.5,), 80)

    def step(s, a):
        return np.asarray(s, float) + 0.05 * np.clip(np.asarray(a, float), -1, 1)

    def controller(s):
        return np.clip(-np.asarray(s, float), -1, 1)

    return spec, step, (lambda s: -(s[..., 0] - 0.9) ** 2), 1, controller, [-1.2], [1.2]


def three_actions():
    """A point in the plane pushed by three actions (the third along a diagonal)."""
    spec = SafetySpec(("px", "py"), {"px": 1.0, "py": 0.5}, (0.2, -0.1), 60)

    def step(s, a):
        s, a = np.asarray(s, float), np.clip(np.asarray(a, float), -1, 1)
        return s + 0.05 * np.stack([a[..., 0] + 0.5 * a[..., 2], a[..., 1] - 0.5 * a[..., 2]], -1)

    def controller(s):
        s = np.asarray(s, float)
        return np.clip(np.concatenate([-s, np.zeros(s.shape[:-1] + (1,))], -1), -1, 1)

    return spec, step, (lambda s: s[..., 0]), 3, controller, [-1.5, -0.8], [1.5, 0.8]


@pytest.mark.parametrize("build", [integrator, three_actions], ids=["1-D state", "three actions"])
def test_a_system_of_another_shape_trains_safely_and_verifies(build, tmp_path):
    spec, step, reward, act_dim, controller, low, high = build()
    low, high = np.array(low), np.array(high)
    torch.set_num_threads(1)
    policy = distill(controller, low, high, steps=300, seed=0)
    system = System(name=build.__name__, make_env=lambda: make_state_env(spec, step, reward, act_dim=act_dim),
                    spec=spec, initial_policy=policy, state_low=low, state_high=high, reward=reward)
    cfg = Config().replace(**{k: v for k, v in TINY.items() if k != "task"})
    summary = crabs.train(system, cfg, out=tmp_path / "run", progress=False)
    assert summary["violations"] == 0 and summary["task"] == build.__name__
    assert summary["certified_epochs"] >= 1 and len(summary["final_eval_end_state"]) == spec.dim
    r = verify_run(tmp_path / "run", system=system, n=2000, states=5, horizon=30, chains_mult=1, steps=5)
    assert r["has_certificate"] and r["sound"] and r["R1_R2"]["certified_but_unsafe"] == 0
    assert r["R3_true_dynamics"]["starts"] == 5 and r["R3_true_dynamics"]["rollouts_violating"] == 0


class StartsAtS0(gym.Wrapper):
    """An environment whose reset ignores ``options={"state": s}`` (many hand-written ones do)."""

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed)


def test_verify_skips_the_true_dynamics_of_an_env_that_cannot_start_anywhere(tmp_path):
    """crabs verify's true-dynamics rollouts need reset(options={"state": s}); without it the audit
    says it did not check them instead of failing, and takes no step."""
    from crabs.envs import ledger_totals, read_ledger
    from crabs.verify import summary_line

    spec, step, reward, act_dim, controller, low, high = integrator()
    low, high = np.array(low), np.array(high)
    torch.set_num_threads(1)
    system = System(name="integrator", spec=spec,
                    make_env=lambda: StartsAtS0(make_state_env(spec, step, reward, act_dim)),
                    initial_policy=distill(controller, low, high, steps=300, seed=0),
                    state_low=low, state_high=high, reward=reward)
    crabs.train(system, Config().replace(**{k: v for k, v in TINY.items() if k != "task"}),
                out=tmp_path / "run", progress=False)
    r = verify_run(tmp_path / "run", system=system, n=2000, states=5, horizon=30, chains_mult=1, steps=5)
    assert "reset ignored options={'state': s}" in r["R3_true_dynamics"]["skipped"]
    assert r["has_certificate"] and r["sound"] and r["R3_model_holds"]
    line = summary_line(r)
    assert "true dynamics not checked (the environment's reset ignored" in line
    assert line.endswith("-> sound, R.3 holds under the model")
    assert ledger_totals(read_ledger(tmp_path / "run" / "verify" / "ledger.jsonl")).env_steps == 0
