"""Long cart-pole: carry a long, heavy pole to the end of the track under a speed limit.

Dynamics: the classic cart-pole equations (Barto et al. 1983, as in Gymnasium's CartPole) with a
longer and heavier pole: cart 1 kg, pole 0.3 kg with half-length 1 m (Gymnasium: 0.1 kg, 0.5 m),
g = 9.8, force ``F = 10 a`` N for the action a in [-1, 1], semi-implicit Euler with dt = 0.02.
State [x, theta, x_dot, theta_dot] (theta from upright), one action, s0 = 0 (at rest, upright),
horizon 500 (10 s). Safe set: |x| <= 1.5 (the track), |theta| <= 0.3 and |x_dot| <= 1.0 (a speed
limit). Reward r(s) = x^2 of the state a step starts from (Move's: go away from the centre); a
violation ends the episode with reward -30 (``info["cost"] = 1``). Why it is hard: the reward grows
toward the track's end, an edge of the safe set, and getting there means tilting the pole to
accelerate (the cart first moves the wrong way), cruising under the speed limit and braking, which
tilts the pole the other way, in time to stop just short of |x| = 1.5. The initial controller (LQR
to the centre) earns 0; carrying the pole to x = 1.49 earns about 905, and a certificate must grow
from the centre to the end of the track (and to the speed limit) to let a policy there.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import gymnasium as gym
import numpy as np
import scipy.linalg

from crabs.envs import SafetySpec, make_state_env
from crabs.initial import distill
from crabs.system import System

G, M_CART, M_POLE, HALF_LENGTH, FORCE, DT = 9.8, 1.0, 0.3, 1.0, 10.0, 0.02
X_MAX, THETA_MAX, X_DOT_MAX, THETA_DOT_BOX = 1.5, 0.3, 1.0, 2.0
S0, HORIZON = (0.0, 0.0, 0.0, 0.0), 500

SPEC = SafetySpec(state_names=("x", "theta", "x_dot", "theta_dot"),
                  limits={"x": X_MAX, "theta": THETA_MAX, "x_dot": X_DOT_MAX}, s0=S0, horizon=HORIZON)
STATE_LOW = np.array([-X_MAX, -THETA_MAX, -X_DOT_MAX, -THETA_DOT_BOX])
STATE_HIGH = -STATE_LOW

# Initial controller: discrete LQR on the linearisation at rest, weights on [x, theta, x_dot,
# theta_dot] and on the action a (in [-1, 1]); gentle, so the cart never comes near the speed limit.
LQR_Q, LQR_R = (1.0, 1.0, 1.0, 0.1), 10.0
# Strong controller: LQR (STRONG_Q, STRONG_R) to the rest state at x = X_GOAL with the position error
# clipped to +-ERR_CAP (which bounds the cruising speed). X_GOAL (1.4..1.49), ERR_CAP (0.5..5) and the
# weights (11 diagonal Q, R in 0.1..8) from a grid search of the return from s0 on this environment,
# among those whose episodes from s0 and from the perturbed test starts are safe. It peaks at
# |x_dot| = 0.95, |theta| = 0.13 and x = 1.4906: close to three edges of the safe set.
STRONG_Q, STRONG_R, X_GOAL, ERR_CAP = (10.0, 10.0, 1.0, 0.1), 3.0, 1.49, 1.0
# The strong controller's return from s0 over one horizon on the true environment (through a
# SafetyMonitor, 0 violations): run_controller(make_env, SPEC, strong_controller).ret, rounded.
REFERENCE_RETURN = 904.7113


def step(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """True next state for states (..., 4) and actions (..., 1); batched, pure NumPy."""
    s, a = np.asarray(s, dtype=np.float64), np.asarray(a, dtype=np.float64)
    x, th, xdot, thdot = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
    f = FORCE * np.clip(a[..., 0], -1.0, 1.0)
    total, pml = M_CART + M_POLE, M_POLE * HALF_LENGTH
    sin, cos = np.sin(th), np.cos(th)
    temp = (f + pml * thdot**2 * sin) / total
    thacc = (G * sin - cos * temp) / (HALF_LENGTH * (4.0 / 3.0 - M_POLE * cos**2 / total))
    xacc = temp - pml * thacc * cos / total
    xdot = xdot + DT * xacc
    x = x + DT * xdot
    thdot = thdot + DT * thacc
    th = th + DT * thdot
    return np.stack([x, th, xdot, thdot], axis=-1)


def reward(s):
    """r(s) = x^2, on NumPy arrays or torch tensors (..., 4)."""
    return s[..., 0] ** 2


def make_env() -> gym.Env:
    """The true environment (observation = the state), ending at the horizon."""
    return make_state_env(SPEC, step, reward, act_dim=1)


@lru_cache(maxsize=8)
def lqr_gain(q: tuple[float, ...] = LQR_Q, r: float = LQR_R) -> np.ndarray:
    """Discrete LQR gain K (a = -K s) on the central-difference linearisation of :func:`step` at rest."""
    s0, eps = np.zeros(4), 1e-6
    A = np.stack([(step(s0 + eps * e, [0.0]) - step(s0 - eps * e, [0.0])) / (2 * eps) for e in np.eye(4)], 1)
    B = ((step(s0, [eps]) - step(s0, [-eps])) / (2 * eps)).reshape(4, 1)
    P = scipy.linalg.solve_discrete_are(A, B, np.diag(q), np.array([[r]]))
    return np.linalg.solve(r + B.T @ P @ B, B.T @ P @ A).reshape(4)


def controller(s: np.ndarray) -> np.ndarray:
    """Safe, zero-reward LQR stabiliser of the centre: states (..., 4) -> actions (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    return np.clip(-(s @ lqr_gain()), -1.0, 1.0)[..., None]


def strong_controller(s: np.ndarray) -> np.ndarray:
    """LQR to rest at x = X_GOAL, the position error clipped: states (..., 4) -> actions (..., 1)."""
    s = np.array(s, dtype=np.float64)
    s[..., 0] = np.clip(s[..., 0] - X_GOAL, -ERR_CAP, ERR_CAP)
    return np.clip(-(s @ lqr_gain(STRONG_Q, STRONG_R)), -1.0, 1.0)[..., None]


@lru_cache(maxsize=4)
def _initial_policy(seed: int):
    return distill(controller, STATE_LOW, STATE_HIGH, steps=2000, seed=seed)


def make_system(seed: int = 0) -> System:
    """The long cart-pole as a CRABS system; the initial policy is :func:`controller` distilled with
    ``seed`` (a few seconds, once per seed and process)."""
    return System(name="long_cartpole", make_env=make_env, spec=SPEC,
                  initial_policy=copy.deepcopy(_initial_policy(seed)),
                  state_low=STATE_LOW, state_high=STATE_HIGH, reward=reward)
