"""Move and Swing (Sec. 5 (c), (d); Appendix C.1): MuJoCo InvertedPendulum.

The physics is Gymnasium's ``inverted_pendulum.xml`` (the v2 model's numbers: hinge +-90 deg,
slider +-1, RK4, timestep 0.02, frame_skip 2 so dt = 0.04, motor gear 100). Differences from
Gymnasium's InvertedPendulum-v5, all from the paper / the authors' runs:

* no |theta| > 0.2 termination of its own and no reset noise: start at rest at 0;
* observation [x, theta, x_dot, theta_dot];
* action scaling as the authors ran it: a in [-1, 1], motor control ``clip(3 a, -max_ctrl,
  max_ctrl)`` with ``max_ctrl = 1`` (at most 100 N). ``max_ctrl = 3`` allows the model's full
  +-300 N. At 100 N the pole can be held still only up to about 0.58 rad and recovered from rest
  only up to about 0.46 rad within |x| <= 0.9: most of Swing's safe set is irrecoverable;
* reward of the state the step starts from (Move: x^2, Swing: theta^2); a step that ends outside
  the safe set terminates the episode with reward ``-violation_penalty`` and ``info["cost"] = 1``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco import MujocoEnv

from crabs.envs.spec import SafetySpec, as_states

HORIZON = 1000
STATE_NAMES = ("x", "theta", "x_dot", "theta_dot")
CTRL_SCALE = 3.0   # motor control = clip(CTRL_SCALE * a, -max_ctrl, max_ctrl), as the authors ran it


def action_bound(max_ctrl: float = 1.0) -> float:
    """The action beyond which the control saturates (``System.action_bound``): 1/3 at 100 N."""
    return min(1.0, max_ctrl / CTRL_SCALE)


MOVE_SPEC = SafetySpec(STATE_NAMES, {"x": 0.9, "theta": 0.2}, (0.0, 0.0, 0.0, 0.0), HORIZON)
SWING_SPEC = SafetySpec(STATE_NAMES, {"x": 0.9, "theta": 1.5}, (0.0, 0.0, 0.0, 0.0), HORIZON)


def move_reward(s: np.ndarray) -> np.ndarray:
    """r(s, a) = x^2 (Move)."""
    return as_states(s)[..., 0] ** 2


def swing_reward(s: np.ndarray) -> np.ndarray:
    """r(s, a) = theta^2 (Swing)."""
    return as_states(s)[..., 1] ** 2


TASKS = {"move": (MOVE_SPEC, move_reward), "swing": (SWING_SPEC, swing_reward)}


class CartPoleTaskEnv(MujocoEnv):
    """Move or Swing on the MuJoCo cart-pole; see the module docstring."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 25}

    def __init__(self, task: str = "move", violation_penalty: float = 30.0, max_ctrl: float = 1.0,
                 **kwargs):
        if task not in TASKS:
            raise ValueError(f"unknown cart-pole task {task!r}; choose from {sorted(TASKS)}")
        if not 0 < max_ctrl <= 3:
            raise ValueError(f"max_ctrl must lie in (0, 3] (the motor's ctrlrange), got {max_ctrl}")
        self.task = task
        self.spec_safety, self._reward = TASKS[task]
        self.violation_penalty = float(violation_penalty)
        self.max_ctrl = float(max_ctrl)
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        MujocoEnv.__init__(self, "inverted_pendulum.xml", 2, observation_space=obs_space,
                           default_camera_config={"trackbodyid": 0, "distance": 2.04}, **kwargs)
        self.metadata["render_fps"] = int(round(1.0 / self.dt))
        # the policy's action space; MujocoEnv set it to the motor's ctrlrange
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def reset_model(self) -> np.ndarray:
        self.set_state(self.init_qpos.copy(), self.init_qvel.copy())
        return self._get_obs()

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        if options and "state" in options:  # start elsewhere (tests, oracle checks)
            s = np.asarray(options["state"], dtype=np.float64).reshape(4)
            self.set_state(s[:2].copy(), s[2:].copy())
            obs = self._get_obs()
        return obs, info

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (1,) or not np.isfinite(a).all():
            raise ValueError(f"action must be one finite number, got {action!r}")
        s = self._get_obs()
        reward = float(self._reward(s))
        ctrl = np.clip(CTRL_SCALE * np.clip(a, -1.0, 1.0), -self.max_ctrl, self.max_ctrl)
        self.do_simulation(ctrl, self.frame_skip)
        obs = self._get_obs()
        violated = not self.spec_safety.is_safe(obs)
        if violated:
            reward = -self.violation_penalty
        if self.render_mode == "human":
            self.render()
        return obs, reward, violated, False, {"cost": float(violated)}
