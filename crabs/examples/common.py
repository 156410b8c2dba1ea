"""What the development systems share: one episode of a NumPy controller on a system's true
environment, through a :class:`~crabs.envs.SafetyMonitor` like every real step (used to measure
their ``REFERENCE_RETURN`` and by the tests). Public API only."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from crabs.envs import SafetyMonitor, SafetySpec
from crabs.rollout import Episode, run_episode

__all__ = ["run_controller"]


def run_controller(make_env: Callable[[], gym.Env], spec: SafetySpec,
                   control: Callable[[np.ndarray], np.ndarray], state=None) -> Episode:
    """One episode of ``control`` (a NumPy function: state (d,) -> action (k,)) on ``make_env()``
    behind a fresh SafetyMonitor, from s0 or from ``state`` (``reset(options={"state": state})``),
    until the environment ends it (a violation or the horizon)."""
    env = SafetyMonitor(make_env(), spec)
    try:
        options = None if state is None else {"state": np.asarray(state, dtype=np.float64)}
        return run_episode(env, lambda s: np.asarray(control(s), dtype=np.float64), options=options)
    finally:
        env.close()
