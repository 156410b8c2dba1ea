"""Upright and Tilt (Sec. 5 (a), (b); Appendix C.1): the Pendulum-v0 dynamics of OpenAI Gym.

g = 10, m = l = 1, dt = 0.05, max speed 8, max torque 2; the policy's action a in [-1, 1] is scaled
to the torque u = 2a. theta is the angle from upright, so ``theta_ddot = 15 sin(theta) + 3 u`` and
full torque (6) balances gravity at ``sin(theta) = 0.4``: ``THETA_LIM = -asin(0.4)``.
The integration order is Pendulum-v0's: the angle moves with the unclipped new speed, the speed is
clipped to +-8 afterwards (Gymnasium's Pendulum-v1 clips first; the paper used v0).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from crabs.envs.spec import SafetySpec, as_states

G, M, L, DT, MAX_SPEED, MAX_TORQUE = 10.0, 1.0, 1.0, 0.05, 8.0, 2.0
THETA_LIM = -math.asin(0.4)  # -0.41151684...: the largest angle the pendulum can be held at
THETA_MAX = 1.5
S0 = (0.3, -0.9)
HORIZON = 200

PENDULUM_SPEC = SafetySpec(
    state_names=("theta", "theta_dot"), limits={"theta": THETA_MAX}, s0=S0, horizon=HORIZON
)


def pendulum_step(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """True next state for states (..., 2) and actions (..., 1) or (...,); batched, pure NumPy."""
    s = np.asarray(s, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == s.ndim:
        a = a[..., 0]
    th, thdot = s[..., 0], s[..., 1]
    u = MAX_TORQUE * np.clip(a, -1.0, 1.0)
    newthdot = thdot + (3 * G / (2 * L) * np.sin(th) + 3.0 / (M * L**2) * u) * DT
    newth = th + newthdot * DT
    newthdot = np.clip(newthdot, -MAX_SPEED, MAX_SPEED)
    return np.stack([newth, newthdot], axis=-1)


def upright_reward(s: np.ndarray) -> np.ndarray:
    """r(s, a) = -theta^2 (Upright)."""
    return -as_states(s)[..., 0] ** 2


def tilt_reward(s: np.ndarray) -> np.ndarray:
    """r(s, a) = -(theta_lim - theta)^2 (Tilt)."""
    return -((THETA_LIM - as_states(s)[..., 0]) ** 2)


REWARDS = {"upright": upright_reward, "tilt": tilt_reward}


class PendulumTaskEnv(gym.Env):
    """Upright or Tilt. The reward of a step is r of the state the step starts from (the paper's
    r(s, a)); a step that ends outside the safe set terminates the episode with reward
    ``-violation_penalty`` instead and ``info["cost"] = 1.0``."""

    metadata = {"render_modes": []}

    def __init__(self, task: str = "upright", violation_penalty: float = 30.0):
        if task not in REWARDS:
            raise ValueError(f"unknown pendulum task {task!r}; choose from {sorted(REWARDS)}")
        self.task = task
        self.spec_safety = PENDULUM_SPEC
        self.violation_penalty = float(violation_penalty)
        self._reward = REWARDS[task]
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        high = np.array([np.inf, MAX_SPEED], dtype=np.float64)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float64)
        self.state = np.asarray(S0, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = np.asarray(S0, dtype=np.float64)
        if options and "state" in options:  # start elsewhere (tests, oracle checks)
            self.state = np.asarray(options["state"], dtype=np.float64).reshape(2)
        return self.state.copy(), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (1,) or not np.isfinite(a).all():
            raise ValueError(f"action must be one finite number, got {action!r}")
        reward = float(self._reward(self.state))
        self.state = pendulum_step(self.state, a)
        violated = not PENDULUM_SPEC.is_safe(self.state)
        if violated:
            reward = -self.violation_penalty
        return self.state.copy(), reward, violated, False, {"cost": float(violated)}
