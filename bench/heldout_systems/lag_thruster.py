"""Held-out system (written 2026-12-01 after the third freeze, bbea557): a cart with a lagging motor.

Built the way a user of the README's "Your own system" would: a hand-written Gymnasium env whose
action is the motor command in newtons (a Box of [-3, 3], brought to CRABS's [-1, 1] with
``gymnasium.wrappers.RescaleAction`` in ``make_env``), float32 observations, an episode that ends
with reward -10 when the cart hits a wall (no cost key), a PD controller distilled into the initial
policy, the default ``Config()``. Nothing of crabs.envs is used to build the env. No CRABS run was
made on it before the held-out run reported in bench/RESULTS.md.

Dynamics (dt = 0.05, semi-implicit Euler): the motor's force follows the command with a first-order
lag, ``f' = (u - f) / TAU`` with TAU = 0.25 s; the cart ``v' = f - 0.2 v``, ``x' = v``; the speed is
held within +-2 (a speed governor). State [x, v, f] (3-D), one action, s0 = (-0.5, 0, 0), horizon 200
(10 s). Safe set: |x| <= 1 (the walls). Reward r(s) = -(x - 0.9)^2 of the state a step starts from:
park 0.1 from the right wall. Why it is hard: the state is three-dimensional, and a braking command
takes a lag to become a braking force (relative degree three), so the cart must start braking well
before the wall; the certificate must hold in the force coordinate too. The initial controller (a
slow PD to the middle) parks at x = 0 and earns about -208.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import gymnasium as gym
import numpy as np

from crabs.envs import SafetySpec
from crabs.initial import distill
from crabs.system import System

U_MAX, TAU, FRICTION, DT = 3.0, 0.25, 0.2, 0.05
WALL, V_MAX = 1.0, 2.0
TARGET = 0.9
S0, HORIZON = (-0.5, 0.0, 0.0), 200

SPEC = SafetySpec(state_names=("x", "v", "f"), limits={"x": WALL}, s0=S0, horizon=HORIZON)
STATE_LOW, STATE_HIGH = np.array([-WALL, -V_MAX, -U_MAX]), np.array([WALL, V_MAX, U_MAX])

# Initial controller: a slow, well-damped PD to the middle, u = -(KP x + KD v) (newtons).
KP, KD = 1.0, 2.0
# Strong controller: full-state feedback to TARGET_REF, u = -(K1 (x - ref) + K2 v + K3 f), by a grid
# search of the return from s0 on this environment (K1 1..40, K2 1..16, K3 0..1.5, ref 0.80..0.95)
# among the gains whose episodes from s0 and from four perturbed starts (within +-0.3) are safe; the
# return is flat near the best (-26.90 at K1 12, K2 7), the motor saturating on the way.
STRONG_K1, STRONG_K2, STRONG_K3, STRONG_REF = 26.0, 15.0, 0.0, 0.90
# The strong controller's return from s0 over one horizon on the true environment (through a
# SafetyMonitor, 0 violations): run_controller(make_env, SPEC, strong_controller).ret, rounded.
REFERENCE_RETURN = -26.864


def step(s: np.ndarray, u: np.ndarray) -> np.ndarray:
    """True next state for states (..., 3) and commands (..., 1) in newtons; batched, pure NumPy."""
    s = np.asarray(s, dtype=np.float64)
    u = np.clip(np.asarray(u, dtype=np.float64)[..., 0], -U_MAX, U_MAX)
    x, v, f = s[..., 0], s[..., 1], s[..., 2]
    f = f + (u - f) * DT / TAU
    v = np.clip(v + (f - FRICTION * v) * DT, -V_MAX, V_MAX)
    return np.stack([x + v * DT, v, f], axis=-1)


def reward(s):
    """r(s) = -(x - 0.9)^2, on NumPy arrays or torch tensors (..., 3)."""
    return -((s[..., 0] - TARGET) ** 2)


class LagThrusterEnv(gym.Env):
    """Observation [x, v, f] (float32), action [u] in newtons, [-3, 3]. Hitting a wall ends the
    episode with reward -10."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-U_MAX, U_MAX, shape=(1,), dtype=np.float32)
        self.state = np.array(S0, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = (options or {}).get("state", S0)
        self.state = np.array(start, dtype=np.float64).reshape(3)
        return self.state.astype(np.float32), {}

    def step(self, action):
        r = float(reward(self.state))
        self.state = step(self.state, np.asarray(action, dtype=np.float64).reshape(1))
        crashed = bool(abs(self.state[0]) > WALL)
        return self.state.astype(np.float32), (-10.0 if crashed else r), crashed, False, {}


def make_env() -> gym.Env:
    env = gym.wrappers.TimeLimit(LagThrusterEnv(), max_episode_steps=HORIZON)
    return gym.wrappers.RescaleAction(env, -1.0, 1.0)


def _feedback(s: np.ndarray, k1: float, k2: float, k3: float, ref: float) -> np.ndarray:
    """u = -(k1 (x - ref) + k2 v + k3 f) in newtons, as CRABS's action in [-1, 1]: (..., 3) -> (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    u = -(k1 * (s[..., 0:1] - ref) + k2 * s[..., 1:2] + k3 * s[..., 2:3])
    return np.clip(u / U_MAX, -1.0, 1.0)


def controller(s: np.ndarray) -> np.ndarray:
    """Safe, poor: a slow PD to the middle, states (..., 3) -> actions (..., 1) in [-1, 1]."""
    return _feedback(s, KP, KD, 0.0, 0.0)


def strong_controller(s: np.ndarray, k1: float = STRONG_K1, k2: float = STRONG_K2, k3: float = STRONG_K3,
                      ref: float = STRONG_REF) -> np.ndarray:
    """Full-state feedback to ``ref``: states (..., 3) -> actions (..., 1) in [-1, 1]."""
    return _feedback(s, k1, k2, k3, ref)


@lru_cache(maxsize=4)
def _initial_policy(seed: int):
    return distill(controller, STATE_LOW, STATE_HIGH, steps=2000, seed=seed)


def make_system(seed: int = 0) -> System:
    return System(name="lag_thruster", make_env=make_env, spec=SPEC,
                  initial_policy=copy.deepcopy(_initial_policy(seed)),
                  state_low=STATE_LOW, state_high=STATE_HIGH, reward=reward)
