"""Held-out system (written 2026-12-07 after the sixth freeze, 8ec530a / 6207aaf): an aircraft's pitch axis.

Built the way a user of the README's "Your own system" would: a hand-written Gymnasium env,
registered with Gymnasium and made with ``gym.make``, whose action is the elevator deflection in
degrees (a Box of [-20, 20], brought to CRABS's [-1, 1] with ``gymnasium.wrappers.RescaleAction``
in ``make_env``), an episode that ends when the wing stalls (``terminated`` with
``info["stalled"] = True``, no cost key), a pitch-attitude PD controller distilled into the initial
policy, the default ``Config()``. Nothing of crabs.envs is used to build the env. No CRABS run was
made on it before the held-out run reported in bench/RESULTS.md.

Dynamics (the short-period mode and the pitch attitude, dt = 0.05 s, explicit Euler; angles in
radians, the elevator delta in radians, positive nose down):
``alpha' = ZA alpha + q + ZD delta + CUB alpha^3`` (angle of attack; the cubic term is the lift
curve bending over toward the stall), ``q' = MA alpha + MQ q + MD delta`` (pitch rate),
``theta' = q`` (pitch attitude), with ZA = -1.2, ZD = -0.15, CUB = 0.8, MA = -4, MQ = -1.5,
MD = -6. State [alpha, q, theta] (3-D), one action, s0 = (0, 0, 0) (level flight), horizon 200
(10 s). Safe set: |alpha| <= 0.25 (the stall). Reward r(s) = -5 (theta - 0.6)^2 of the state a
step starts from: pitch up to a 0.6 rad climb attitude. Why it is hard: the pitch attitude is
unconstrained and the reward asks for it to move fast, but pitching up fast builds angle of attack
(alpha' grows with q), and near the stall the cubic term makes alpha run away by itself; the
constrained coordinate is not the one the reward asks to move. The initial controller (a gentle
PD to a 0.1 rad attitude) stays far from the stall (alpha below 0.03) and earns about -270.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import gymnasium as gym
import numpy as np

from crabs.envs import SafetySpec
from crabs.initial import distill
from crabs.system import System

ZA, ZD, CUB, MA, MQ, MD, DT = -1.2, -0.15, 0.8, -4.0, -1.5, -6.0, 0.05
DELTA_MAX_DEG = 20.0
ALPHA_STALL, Q_MAX, THETA_LOW, THETA_HIGH = 0.25, 2.0, -0.5, 1.2
TARGET = 0.6
S0, HORIZON = (0.0, 0.0, 0.0), 200

SPEC = SafetySpec(state_names=("alpha", "q", "theta"), limits={"alpha": ALPHA_STALL}, s0=S0, horizon=HORIZON)
STATE_LOW = np.array([-ALPHA_STALL, -Q_MAX, THETA_LOW])
STATE_HIGH = np.array([ALPHA_STALL, Q_MAX, THETA_HIGH])
ENV_ID = "PitchAxis-v0"


def step(s: np.ndarray, delta_deg: np.ndarray) -> np.ndarray:
    """True next state for states (..., 3) and elevator deflections (..., 1) in degrees; batched,
    pure NumPy."""
    s = np.asarray(s, dtype=np.float64)
    d = np.deg2rad(np.clip(np.asarray(delta_deg, dtype=np.float64)[..., 0], -DELTA_MAX_DEG, DELTA_MAX_DEG))
    a, q, th = s[..., 0], s[..., 1], s[..., 2]
    a_next = a + (ZA * a + q + ZD * d + CUB * a ** 3) * DT
    q_next = q + (MA * a + MQ * q + MD * d) * DT
    return np.stack([a_next, q_next, th + q * DT], axis=-1)


def reward(s):
    """r(s) = -5 (theta - 0.6)^2, on NumPy arrays or torch tensors (..., 3)."""
    return -5.0 * (s[..., 2] - TARGET) ** 2


class PitchAxisEnv(gym.Env):
    """Observation [alpha, q, theta] (rad, rad/s, rad), action [elevator] in degrees. A stall
    (|alpha| > 0.25) ends the episode with ``info["stalled"] = True``; no cost is reported."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-DELTA_MAX_DEG, DELTA_MAX_DEG, shape=(1,), dtype=np.float32)
        self.state = np.array(S0, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = (options or {}).get("state", S0)
        self.state = np.array(start, dtype=np.float64).reshape(3)
        return self.state.copy(), {}

    def step(self, action):
        r = float(reward(self.state))
        self.state = step(self.state, np.asarray(action, dtype=np.float64).reshape(1))
        stalled = bool(abs(self.state[0]) > ALPHA_STALL)
        return self.state.copy(), r, stalled, False, {"stalled": stalled}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=PitchAxisEnv, max_episode_steps=HORIZON)


def make_env() -> gym.Env:
    return gym.wrappers.RescaleAction(gym.make(ENV_ID), -1.0, 1.0)


def _attitude_pd(s: np.ndarray, ref: float, kp: float, kd: float) -> np.ndarray:
    """delta = -(kp (ref - theta) - kd q) rad (nose up is negative), as CRABS's action, the
    deflection over 20 degrees: states (..., 3) -> actions (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    q, th = s[..., 1:2], s[..., 2:3]
    delta = -(kp * (ref - th) - kd * q)
    return np.clip(np.rad2deg(delta) / DELTA_MAX_DEG, -1.0, 1.0)


# Initial controller: a gentle PD to a 0.1 rad attitude (safe and poor).
INIT_REF, INIT_KP, INIT_KD = 0.1, 1.0, 1.0
# Strong controller: the same PD law, its reference and gains by a grid search of the return from s0
# on this environment (ref 0.5..0.65, kp 0.5..12, kd 0.25..6) among the gains whose episodes from s0
# and from four perturbed starts (alpha within +-0.15, q within +-0.5, theta within 0.5) are safe:
# the stiffer gains that would climb faster stall from s0 or a perturbed start; this one peaks at
# alpha 0.199.
STRONG_REF, STRONG_KP, STRONG_KD = 0.6, 2.0, 2.0
# The strong controller's return from s0 over one horizon on the true environment (through a
# SafetyMonitor, 0 violations): run_controller(make_env, SPEC, strong_controller).ret, rounded.
REFERENCE_RETURN = -28.6179


def controller(s: np.ndarray) -> np.ndarray:
    """Safe, poor: pitches gently to 0.1 rad; states (..., 3) -> actions (..., 1) in [-1, 1]."""
    return _attitude_pd(s, INIT_REF, INIT_KP, INIT_KD)


def strong_controller(s: np.ndarray, ref: float = STRONG_REF, kp: float = STRONG_KP,
                      kd: float = STRONG_KD) -> np.ndarray:
    """The pitch-attitude PD with the grid search's gains: states (..., 3) -> actions (..., 1)."""
    return _attitude_pd(s, ref, kp, kd)


@lru_cache(maxsize=4)
def _initial_policy(seed: int):
    return distill(controller, STATE_LOW, STATE_HIGH, steps=2000, seed=seed)


def make_system(seed: int = 0) -> System:
    return System(name="pitch_axis", make_env=make_env, spec=SPEC,
                  initial_policy=copy.deepcopy(_initial_policy(seed)),
                  state_low=STATE_LOW, state_high=STATE_HIGH, reward=reward)
