"""A Gymnasium environment from a system given as equations: a NumPy step function, a reward and a
:class:`~crabs.envs.SafetySpec`, with the built-in tasks' conventions::

    env = make_state_env(spec, step, reward, act_dim=1)   # TimeLimit(StateEnv(...), spec.horizon)

The observation is the state (the spec's coordinates, in order); an episode starts at s0 or at
``reset(options={"state": s})``; the reward of a step is r of the state it starts from; a step that
ends outside the safe set ends the episode with reward ``-violation_penalty`` and
``info["cost"] = 1.0``. Actions lie in [-1, 1]^act_dim.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from crabs.envs.spec import SafetySpec

__all__ = ["StateEnv", "make_state_env"]

_COUNTS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class StateEnv(gym.Env):
    """A deterministic system ``s' = step(s, a)`` as a Gymnasium env; observation = the state.

    Args:
        spec: the safe set, s0 and horizon (``spec_safety``, like the built-in envs).
        step: the true dynamics, NumPy state (d,) and action (act_dim,) -> next state (d,).
        reward: r(s) of the state a step starts from.
        act_dim: the number of actions, each in [-1, 1].
        violation_penalty: the reward of a step that ends outside the safe set (negated).
        obs_high: symmetric bounds of ``observation_space`` (d,), ``inf`` where unbounded;
            default +-inf everywhere.
    """

    metadata = {"render_modes": []}

    def __init__(self, spec: SafetySpec, step: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 reward: Callable[[np.ndarray], float], act_dim: int, violation_penalty: float = 30.0,
                 obs_high=None):
        if int(act_dim) != act_dim or act_dim < 1:
            raise ValueError(f"act_dim must be a positive integer, got {act_dim!r}")
        self.spec_safety = spec
        self.dynamics, self.reward = step, reward
        self.act_dim = int(act_dim)
        self.violation_penalty = float(violation_penalty)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.act_dim,), dtype=np.float32)
        if obs_high is None:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(spec.dim,), dtype=np.float64)
        else:
            high = np.asarray(obs_high, dtype=np.float64)
            if high.shape != (spec.dim,):
                raise ValueError(f"obs_high must have shape ({spec.dim},), got {high.shape}")
            self.observation_space = gym.spaces.Box(-high, high, dtype=np.float64)
        count = _COUNTS[self.act_dim - 1] if self.act_dim <= len(_COUNTS) else str(self.act_dim)
        self._action_words = f"{count} finite number{'s' if self.act_dim > 1 else ''}"
        self.state = spec.s0_array()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.spec_safety.s0_array()
        if options and "state" in options:
            self.state = np.asarray(options["state"], dtype=np.float64).reshape(self.spec_safety.dim)
        return self.state.copy(), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.act_dim,) or not np.isfinite(a).all():
            raise ValueError(f"action must be {self._action_words}, got {action!r}")
        r = float(self.reward(self.state))
        self.state = self.dynamics(self.state, a)
        violated = not self.spec_safety.is_safe(self.state)
        return self.state.copy(), -self.violation_penalty if violated else r, violated, False, \
            {"cost": float(violated)}


def make_state_env(spec: SafetySpec, step: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   reward: Callable[[np.ndarray], float], act_dim: int, **kw) -> gym.Env:
    """:class:`StateEnv` (``kw``: ``violation_penalty``, ``obs_high``) ending at ``spec.horizon``."""
    return gym.wrappers.TimeLimit(StateEnv(spec, step, reward, act_dim, **kw), max_episode_steps=spec.horizon)
