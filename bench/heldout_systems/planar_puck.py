"""Held-out system (written 2026-11-30 after the second freeze, 02af102): a puck on a table.

Built the way a user of the README's "Your own system" would: a hand-written Gymnasium env (wrapped
in a TimeLimit) that ends the episode and reports ``info["cost"] = 1`` when the puck leaves the
table, a PD controller distilled into a two-action initial policy, the default ``Config()``. Nothing
of crabs.envs is used to build the env. No CRABS run was made on it before the held-out run reported
in bench/RESULTS.md.

Dynamics: a puck pushed by two thrusters against quadratic air drag, per axis
``v' = F a - C |v| v`` with F = 1, C = 0.5 (terminal speed sqrt(2)), semi-implicit Euler with
dt = 0.1. State [x, y, vx, vy] (4-D), TWO actions (ax, ay) in [-1, 1]^2, s0 = (0, 0, 0, 0), horizon
200 (20 s). Safe set: |x| <= 1 and |y| <= 1 (the table). Reward r(s) = -((x - 0.85)^2 + (y + 0.6)^2)
of the state a step starts from: hold the puck near a corner, 0.15 from one edge. A step that leaves
the table ends the episode with reward -30. Why it is hard: the target is close to the edge, the
thrust that brakes is the thrust that accelerates (1 m/s^2, about 1 m of braking from terminal
speed), and the two axes must both be certified. The initial controller (a slow PD to the centre)
rests at s0 and earns about -216.5.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import gymnasium as gym
import numpy as np

from crabs.envs import SafetySpec
from crabs.initial import distill
from crabs.system import System

THRUST, DRAG, DT = 1.0, 0.5, 0.1
EDGE, V_BOX = 1.0, 2.0
TARGET = (0.85, -0.6)
S0, HORIZON = (0.0, 0.0, 0.0, 0.0), 200

SPEC = SafetySpec(state_names=("x", "y", "vx", "vy"), limits={"x": EDGE, "y": EDGE}, s0=S0, horizon=HORIZON)
STATE_LOW, STATE_HIGH = np.array([-EDGE, -EDGE, -V_BOX, -V_BOX]), np.array([EDGE, EDGE, V_BOX, V_BOX])

# Initial controller: a slow, well-damped PD to the centre, a = -(KP p + KD v) per axis.
PD_KP, PD_KD = 0.5, 1.5
# Strong controller: PD to the target, a = -(KP (p - target) + KD v) per axis, clipped. Gains from a
# grid search of the return from s0 on this environment (KP in 0.5..40, KD in 0.5..20) among those
# whose episodes from s0 and from four perturbed starts (positions and speeds uniform within +-0.3)
# are safe; it overshoots to |x| = 0.913 at most.
STRONG_KP, STRONG_KD = 30.0, 10.0
# The strong controller's return from s0 over one horizon on the true environment (through a
# SafetyMonitor, 0 violations): run_controller(make_env, SPEC, strong_controller).ret, rounded.
REFERENCE_RETURN = -7.3652


def step(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """True next state for states (..., 4) and actions (..., 2); batched, pure NumPy."""
    s = np.asarray(s, dtype=np.float64)
    a = np.clip(np.asarray(a, dtype=np.float64), -1.0, 1.0)
    p, v = s[..., :2], s[..., 2:]
    v = v + (THRUST * a - DRAG * np.abs(v) * v) * DT
    return np.concatenate([p + v * DT, v], axis=-1)


def reward(s):
    """r(s) = -((x - 0.85)^2 + (y + 0.6)^2), on NumPy arrays or torch tensors (..., 4)."""
    return -((s[..., 0] - TARGET[0]) ** 2 + (s[..., 1] - TARGET[1]) ** 2)


class PlanarPuckEnv(gym.Env):
    """The puck as a plain Gymnasium env: observation [x, y, vx, vy], actions [ax, ay] in [-1, 1]."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.state = np.array(S0, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = (options or {}).get("state", S0)
        self.state = np.array(start, dtype=np.float64).reshape(4)
        return self.state.copy(), {}

    def step(self, action):
        r = float(reward(self.state))
        self.state = step(self.state, np.asarray(action, dtype=np.float64).reshape(2))
        off = bool(np.any(np.abs(self.state[:2]) > EDGE))
        return self.state.copy(), -30.0 if off else r, off, False, {"cost": float(off)}


def make_env() -> gym.Env:
    return gym.wrappers.TimeLimit(PlanarPuckEnv(), max_episode_steps=HORIZON)


def _pd(s: np.ndarray, target, kp: float, kd: float) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    return np.clip(-(kp * (s[..., :2] - np.asarray(target)) + kd * s[..., 2:]), -1.0, 1.0)


def controller(s: np.ndarray) -> np.ndarray:
    """Safe, slow PD to the centre: states (..., 4) -> actions (..., 2)."""
    return _pd(s, (0.0, 0.0), PD_KP, PD_KD)


def strong_controller(s: np.ndarray, kp: float = STRONG_KP, kd: float = STRONG_KD) -> np.ndarray:
    """PD to the target near the corner: states (..., 4) -> actions (..., 2)."""
    return _pd(s, TARGET, kp, kd)


@lru_cache(maxsize=4)
def _initial_policy(seed: int):
    return distill(controller, STATE_LOW, STATE_HIGH, steps=2000, seed=seed)


def make_system(seed: int = 0) -> System:
    return System(name="planar_puck", make_env=make_env, spec=SPEC,
                  initial_policy=copy.deepcopy(_initial_policy(seed)),
                  state_low=STATE_LOW, state_high=STATE_HIGH, reward=reward)
