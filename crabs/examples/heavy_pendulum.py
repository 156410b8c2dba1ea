"""Heavy pendulum: hold a heavier, shorter pendulum tilted near the edge of its safe set.

Dynamics: Pendulum-v0's equations with m = 1.3, l = 0.8 (g = 10, dt = 0.05), theta the angle from
upright, ``theta_ddot = 3g/(2l) sin(theta) + 3/(m l^2) u = 18.75 sin(theta) + 3.61 u`` with the
torque ``u = 4a`` for the action a in [-1, 1]; the angle moves with the new speed, the speed is
clipped to +-8 afterwards. State [theta, theta_dot], one action, s0 = (0, 0), horizon 200. Safe set:
|theta| <= 1.0. Reward r(s) = -(theta - 0.8)^2 of the state a step starts from; a violation ends the
episode with reward -30 (``info["cost"] = 1``). Why it is hard: full torque holds the pendulum still
only up to asin(14.42 / 18.75) = 0.88 rad, so the reward's target 0.8 lies just inside the viability
kernel and close to the safe set's edge: past about 0.88 rad (less with outward speed) the pendulum
falls out whatever the policy does. The initial controller (PD to upright) earns about -128; reaching
0.8 quickly without overshooting earns about -2.7, and a certificate must grow from upright to the
kernel's edge to let a policy there.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import gymnasium as gym
import numpy as np

from crabs.envs import SafetySpec, make_state_env
from crabs.initial import distill
from crabs.system import System

G, M, L, DT = 10.0, 1.3, 0.8, 0.05
MAX_TORQUE, MAX_SPEED = 4.0, 8.0
GRAVITY = 3 * G / (2 * L)           # 18.75: theta_ddot per unit sin(theta)
TORQUE_GAIN = 3.0 / (M * L**2)      # 3.61: theta_ddot per N m
THETA_MAX, TARGET = 1.0, 0.8
HOLD_LIMIT = math.asin(MAX_TORQUE * TORQUE_GAIN / GRAVITY)  # 0.878: the largest angle full torque holds
S0, HORIZON = (0.0, 0.0), 200

SPEC = SafetySpec(state_names=("theta", "theta_dot"), limits={"theta": THETA_MAX}, s0=S0, horizon=HORIZON)
STATE_LOW, STATE_HIGH = np.array([-THETA_MAX, -MAX_SPEED]), np.array([THETA_MAX, MAX_SPEED])

# Initial controller: PD to upright, a = -(K theta + D theta_dot): closed loop (linearised)
# theta'' = (18.75 - 14.42 K) theta - 14.42 D theta', a well-damped return to 0.
PD_K, PD_D = 2.5, 0.6
# Strong controller: feedback linearisation to the target, theta'' = -KP (theta - 0.8) - KD theta',
# within the torque bound. Gains from a grid search (KP in 1..115, KD in 1..29) of the return from s0 on
# this environment, among the gains whose episodes from s0 and from the perturbed test starts are safe
# (it overshoots nowhere: theta rises monotonically to 0.8).
STRONG_KP, STRONG_KD = 80.0, 21.0
# The strong controller's return from s0 over one horizon on the true environment (through a
# SafetyMonitor, 0 violations): run_controller(make_env, SPEC, strong_controller).ret, rounded.
REFERENCE_RETURN = -2.6629


def step(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """True next state for states (..., 2) and actions (..., 1); batched, pure NumPy."""
    s, a = np.asarray(s, dtype=np.float64), np.asarray(a, dtype=np.float64)
    th, thdot = s[..., 0], s[..., 1]
    u = MAX_TORQUE * np.clip(a[..., 0], -1.0, 1.0)
    thdot = thdot + (GRAVITY * np.sin(th) + TORQUE_GAIN * u) * DT
    th = th + thdot * DT
    return np.stack([th, np.clip(thdot, -MAX_SPEED, MAX_SPEED)], axis=-1)


def reward(s):
    """r(s) = -(theta - 0.8)^2, on NumPy arrays or torch tensors (..., 2)."""
    return -((s[..., 0] - TARGET) ** 2)


def make_env() -> gym.Env:
    """The true environment (observation = the state), ending at the horizon."""
    return make_state_env(SPEC, step, reward, act_dim=1, obs_high=[np.inf, MAX_SPEED])


def controller(s: np.ndarray) -> np.ndarray:
    """Safe, low-reward PD stabiliser of upright: states (..., 2) -> actions (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    return np.clip(-(PD_K * s[..., :1] + PD_D * s[..., 1:2]), -1.0, 1.0)


def strong_controller(s: np.ndarray) -> np.ndarray:
    """Feedback linearisation to theta = 0.8 within the torque bound: states (..., 2) -> (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    th, thdot = s[..., :1], s[..., 1:2]
    acc = -STRONG_KP * (th - TARGET) - STRONG_KD * thdot
    return np.clip((acc - GRAVITY * np.sin(th)) / (TORQUE_GAIN * MAX_TORQUE), -1.0, 1.0)


@lru_cache(maxsize=4)
def _initial_policy(seed: int):
    return distill(controller, STATE_LOW, STATE_HIGH, steps=2000, seed=seed)


def make_system(seed: int = 0) -> System:
    """The heavy pendulum as a CRABS system; the initial policy is :func:`controller` distilled with
    ``seed`` (a few seconds, once per seed and process)."""
    return System(name="heavy_pendulum", make_env=make_env, spec=SPEC,
                  initial_policy=copy.deepcopy(_initial_policy(seed)),
                  state_low=STATE_LOW, state_high=STATE_HIGH, reward=reward)
