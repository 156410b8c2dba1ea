"""Held-out system (written 2026-12-07 after the fifth freeze, 30c2556): an exothermic stirred-tank reactor.

Built the way a user of the README's "Your own system" would: a hand-written Gymnasium env whose
action is the coolant valve's opening in [0, 1] (brought to CRABS's [-1, 1] with
``gymnasium.wrappers.RescaleAction`` in ``make_env``), an episode that, like a Safety-Gymnasium
task, reports ``info["cost"] = 1`` when the reactor overheats but does not end there, a
proportional temperature controller distilled into the initial policy, the default ``Config()``.
Nothing of crabs.envs is used to build the env. No CRABS run was made on it before the held-out
run reported in bench/RESULTS.md.

Dynamics (dimensionless, dt = 0.1, explicit Euler): fresh reactant flows in at rate F and is
consumed at the Arrhenius rate k(T) = K0 exp(E T); the reaction heats the tank, the outflow and the
coolant (at T = -0.5, through a valve u) cool it:
``c' = F (1 - c) - k(T) c``, ``T' = H k(T) c - F T - KC u (T + 0.5)``, with F = 0.5, K0 = 0.4,
E = 2.5, H = 1.6, KC = 2. State [c, T] (2-D, c kept in [0, 1]), one action, s0 = (1, 0) (a tank
full of cold reactant), horizon 200 (20 s). Safe set: T <= 1. Reward r(s) = 5 k(T) c of the state a
step starts from (the production rate). Why it is hard: the production rate, and with it the
reward, grows exponentially toward the temperature limit, and so does the heat: above T of about
0.9, reactant that has built up (c above about 0.45) releases heat faster than the open valve can
remove it, so a reactor that is still inside the safe set can be past saving (thermal runaway); the
tank starts full of reactant, so heating it too fast overshoots. The initial controller holds T
near 0.2 and earns about 297.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import gymnasium as gym
import numpy as np
import torch

from crabs.envs import SafetySpec
from crabs.initial import distill
from crabs.system import System

F, K0, E, H, KC, DT = 0.5, 0.4, 2.5, 1.6, 2.0, 0.1
T_MAX, T_COOLANT = 1.0, -0.5
S0, HORIZON = (1.0, 0.0), 200

SPEC = SafetySpec(state_names=("c", "T"), limits={"T": T_MAX}, s0=S0, horizon=HORIZON)
STATE_LOW, STATE_HIGH = np.array([0.0, T_COOLANT]), np.array([1.0, T_MAX])


def rate(T):
    """The Arrhenius rate K0 exp(E T), on NumPy arrays or torch tensors."""
    return K0 * (torch.exp(E * T) if isinstance(T, torch.Tensor) else np.exp(E * T))


def step(s: np.ndarray, valve: np.ndarray) -> np.ndarray:
    """True next state for states (..., 2) and valve openings (..., 1) in [0, 1]; batched, pure NumPy."""
    s = np.asarray(s, dtype=np.float64)
    u = np.clip(np.asarray(valve, dtype=np.float64)[..., 0], 0.0, 1.0)
    c, T = s[..., 0], s[..., 1]
    k = rate(T)
    c_next = np.clip(c + (F * (1.0 - c) - k * c) * DT, 0.0, 1.0)
    T_next = T + (H * k * c - F * T - KC * u * (T - T_COOLANT)) * DT
    return np.stack([c_next, T_next], axis=-1)


def reward(s):
    """r(s) = 5 k(T) c, on NumPy arrays or torch tensors (..., 2)."""
    return 5.0 * rate(s[..., 1]) * s[..., 0]


class ReactorEnv(gym.Env):
    """Observation [c, T], action [valve] in [0, 1]. Overheating (T > 1) is reported as
    ``info["cost"] = 1``; the episode goes on (only the horizon ends it)."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(np.array([0.0, -np.inf]), np.array([1.0, np.inf]),
                                                dtype=np.float64)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.state = np.array(S0, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = (options or {}).get("state", S0)
        self.state = np.array(start, dtype=np.float64).reshape(2)
        return self.state.copy(), {}

    def step(self, action):
        r = float(reward(self.state))
        self.state = step(self.state, np.asarray(action, dtype=np.float64).reshape(1))
        return self.state.copy(), r, False, False, {"cost": float(self.state[1] > T_MAX)}


def make_env() -> gym.Env:
    env = gym.wrappers.TimeLimit(ReactorEnv(), max_episode_steps=HORIZON)
    return gym.wrappers.RescaleAction(env, -1.0, 1.0)


def _temperature_control(s: np.ndarray, ref: float, kp: float, kq: float) -> np.ndarray:
    """valve = 0.3 + kp (T - ref) + kq H k(T) c (the reaction's heat fed forward), as CRABS's
    action 2 valve - 1: states (..., 2) -> actions (..., 1)."""
    s = np.asarray(s, dtype=np.float64)
    c, T = s[..., 0:1], s[..., 1:2]
    valve = np.clip(0.3 + kp * (T - ref) + kq * H * rate(T) * c, 0.0, 1.0)
    return 2.0 * valve - 1.0


# Initial controller: proportional control of T to 0.2 (safe and poor).
INIT_REF, INIT_KP, INIT_KQ = 0.2, 4.0, 0.0
# Strong controller: the same law with the reaction's heat fed forward, its reference and gains by a
# grid search of the return from s0 on this environment (ref 0.80..1.0, kp 1..32, kq 0..1.5) among the
# gains whose episodes from s0 and from four perturbed starts (within +-0.3) are safe: the reference at
# the limit itself, the feed-forward holding T at 0.92 (0.964 at the peak from s0); the return is flat
# near the best (471.6 at ref 0.99).
STRONG_REF, STRONG_KP, STRONG_KQ = 1.0, 8.0, 0.5
# The strong controller's return from s0 over one horizon on the true environment (through a
# SafetyMonitor, 0 violations): run_controller(make_env, SPEC, strong_controller).ret, rounded.
REFERENCE_RETURN = 472.8118


def controller(s: np.ndarray) -> np.ndarray:
    """Safe, poor: holds T near 0.2; states (..., 2) -> actions (..., 1) in [-1, 1]."""
    return _temperature_control(s, INIT_REF, INIT_KP, INIT_KQ)


def strong_controller(s: np.ndarray, ref: float = STRONG_REF, kp: float = STRONG_KP,
                      kq: float = STRONG_KQ) -> np.ndarray:
    """Temperature control with the reaction's heat fed forward: states (..., 2) -> actions (..., 1)."""
    return _temperature_control(s, ref, kp, kq)


@lru_cache(maxsize=4)
def _initial_policy(seed: int):
    return distill(controller, STATE_LOW, STATE_HIGH, steps=2000, seed=seed)


def make_system(seed: int = 0) -> System:
    return System(name="cstr", make_env=make_env, spec=SPEC,
                  initial_policy=copy.deepcopy(_initial_policy(seed)),
                  state_low=STATE_LOW, state_high=STATE_HIGH, reward=reward)
