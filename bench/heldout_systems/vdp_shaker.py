"""Held-out system (written 2026-11-30 after the second freeze, 02af102): a van der Pol shaker.

Built the way a user of the README's "Your own system" would: a hand-written Gymnasium env
registered with ``gymnasium.register`` and made with ``gym.make``, that knows nothing of safety (it
neither ends the episode nor reports a cost when the safe set is left: only CRABS's SafetyMonitor
sees a violation), a PD-style controller distilled into the initial policy, the default ``Config()``.
Nothing of crabs.envs is used to build the env. No CRABS run was made on it before the held-out
run reported in bench/RESULTS.md.

Dynamics: van der Pol with mu = 1 and a bounded force, ``x'' = mu (1 - x^2) x' - x + 2 a``,
a in [-1, 1], semi-implicit Euler with dt = 0.05 (the speed first, then the position with the new
speed); the speed is held within +-5 (an actuator's speed limit). State [x, v], one action, s0 = (0, 0),
horizon 200 (10 s). Safe set |x| <= 1.5. Reward r(s) = v^2 of the state a step starts from: shake as
hard as the stroke allows. Why it is hard: inside |x| < 1 the plant is anti-damped (it pumps energy
in by itself and its free limit cycle reaches |x| = 2, outside the safe set), the best return comes
from swinging through the whole stroke at speed, and braking at the ends of the stroke is limited by
the force bound. The initial controller (damping, a = -0.5 v) rests at the origin and earns 0.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import gymnasium as gym
import numpy as np

from crabs.envs import SafetySpec
from crabs.initial import distill
from crabs.system import System

MU, FORCE, DT = 1.0, 2.0, 0.05
X_MAX, V_MAX = 1.5, 5.0
S0, HORIZON = (0.0, 0.0), 200
ENV_ID = "VdpShaker-v0"

SPEC = SafetySpec(state_names=("x", "v"), limits={"x": X_MAX}, s0=S0, horizon=HORIZON)
STATE_LOW, STATE_HIGH = np.array([-X_MAX, -V_MAX]), np.array([X_MAX, V_MAX])

# Initial controller: damping, a = -D v, so x'' = (mu (1 - x^2) - 2 D) x' - x: with D = 0.75 the loop
# linearised at the origin has damping ratio 0.25 (the plant's own anti-damping mu = 1 overcome), a
# slow return to rest; from s0 it never moves.
DAMPING = 0.75
# Strong controller: energy pumping to a target amplitude, a = K (E* - E) v with E = (v^2 + x^2) / 2 and
# E* = AMP^2 / 2. AMP and K from a grid search of the return from s0 on this environment (AMP in
# 0.8..1.48 by 0.02, K in 0.5..24) among those whose episodes from s0 and from four perturbed starts
# (uniform within +-0.3) are safe: the largest amplitude of the grid wins, and its swing reaches
# |x| = 1.44 of the 1.5 allowed.
STRONG_AMP, STRONG_K = 1.48, 1.0
# The strong controller's return from s0 over one horizon on the true environment (through a
# SafetyMonitor, 0 violations): run_controller(make_env, SPEC, strong_controller).ret, rounded.
REFERENCE_RETURN = 235.4706


def step(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """True next state for states (..., 2) and actions (..., 1); batched, pure NumPy."""
    s = np.asarray(s, dtype=np.float64)
    a = np.clip(np.asarray(a, dtype=np.float64), -1.0, 1.0)
    x, v = s[..., 0], s[..., 1]
    v = np.clip(v + (MU * (1.0 - x**2) * v - x + FORCE * a[..., 0]) * DT, -V_MAX, V_MAX)
    return np.stack([x + v * DT, v], axis=-1)


def reward(s):
    """r(s) = v^2, on NumPy arrays or torch tensors (..., 2)."""
    return s[..., 1] ** 2


class VdpShakerEnv(gym.Env):
    """The shaker as a plain Gymnasium env: observation [x, v], action [a] in [-1, 1]; it ends only at
    the horizon (through the TimeLimit that ``gym.make`` adds) and knows nothing of the safe set."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.state = np.array(S0, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = (options or {}).get("state", S0)
        self.state = np.array(start, dtype=np.float64).reshape(2)
        return self.state.copy(), {}

    def step(self, action):
        r = float(reward(self.state))
        self.state = step(self.state, np.asarray(action, dtype=np.float64).reshape(1))
        return self.state.copy(), r, False, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=VdpShakerEnv, max_episode_steps=HORIZON)


def make_env() -> gym.Env:
    return gym.make(ENV_ID)


def controller(s: np.ndarray) -> np.ndarray:
    """Safe, zero-reward damping to rest: states (..., 2) -> actions (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    return np.clip(-DAMPING * s[..., 1:2], -1.0, 1.0)


def strong_controller(s: np.ndarray, amp: float = STRONG_AMP, k: float = STRONG_K) -> np.ndarray:
    """Energy pumping to the amplitude ``amp``: states (..., 2) -> actions (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    x, v = s[..., :1], s[..., 1:2]
    energy = 0.5 * (v**2 + x**2)
    a = k * (0.5 * amp**2 - energy) * v
    # from rest at the origin the pump has nothing to act on: kick it
    a = np.where(np.abs(v) + np.abs(x) < 1e-9, 1.0, a)
    return np.clip(a, -1.0, 1.0)


@lru_cache(maxsize=4)
def _initial_policy(seed: int):
    return distill(controller, STATE_LOW, STATE_HIGH, steps=2000, seed=seed)


def make_system(seed: int = 0) -> System:
    return System(name="vdp_shaker", make_env=make_env, spec=SPEC,
                  initial_policy=copy.deepcopy(_initial_policy(seed)),
                  state_low=STATE_LOW, state_high=STATE_HIGH, reward=reward)
