"""The one episode loop. Every runner (CRABS, the baselines, ``crabs verify``, ``crabs rollout``, the
check of a distilled initial policy) steps its environment through :func:`run_episode`.

An *actor* maps a state to an action, either a bare array or a :class:`Decision` that also says
whether a safeguard chose it and what U(s, a, h) the model gave it. ``on_step`` hooks see every
:class:`Step` (storing the transition, learning, the model-failure check of Alg. 3's guarantee) and
may end the episode early by returning True.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from crabs.envs import SafetyMonitor


@dataclass
class Decision:
    """What an actor chose at one state."""

    action: np.ndarray
    safeguard: bool = False              # the safeguard (or the last certified policy) chose it
    U: float | None = None               # U(s, action, h) under the model; None: not checked
    proposed: np.ndarray | None = None   # the action the learner learns from, where it differs
                                         # (RecoveryRL: the task policy's, before the shield)


@dataclass
class Step:
    """One real transition, as the hooks see it."""

    t: int                  # its index in the episode (0: the first step)
    s: np.ndarray
    decision: Decision
    r: float
    s2: np.ndarray
    terminated: bool
    truncated: bool
    cost: float             # 1.0 at a violation (the monitor's verdict), else 0.0


@dataclass
class Episode:
    ret: float
    length: int
    violated: bool
    safeguards: int         # steps whose action a safeguard chose
    states: np.ndarray      # the visited states, s_0 ... s_length


Actor = Callable[[np.ndarray], "np.ndarray | Decision"]
Hook = Callable[[Step], "bool | None"]


def mean_actor(policy) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic (mean) action tanh(mu(s)) of a TanhGaussianPolicy, as a NumPy function."""

    def act(s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            a = policy.mean_action(torch.as_tensor(s, dtype=torch.float32))
        return a.double().numpy()

    return act


def run_episode(env: gym.Env, actor: Actor, on_step: Hook | None = None, *, seed: int | None = None,
                options: dict | None = None, max_steps: int | None = None,
                on_reset: Callable[[np.ndarray], None] | None = None) -> Episode:
    """One episode of ``actor`` from ``env.reset(seed, options)``, until the environment ends it, a
    hook returns True or ``max_steps`` steps are taken. ``on_reset`` sees the first state before any
    step (and may refuse it by raising). Real environments are only stepped through a
    :class:`SafetyMonitor`; a simulation of a model (an env with ``is_model = True``) may be
    stepped directly."""
    if not isinstance(env, SafetyMonitor) and not getattr(env.unwrapped, "is_model", False):
        raise TypeError("real environments are only stepped through a SafetyMonitor")
    s, _ = env.reset(seed=seed, options=options)
    if on_reset is not None:
        on_reset(s)
    states, ret, violated, guards, t = [s], 0.0, False, 0, 0
    while max_steps is None or t < max_steps:
        d = actor(s)
        d = d if isinstance(d, Decision) else Decision(d)
        s2, r, term, trunc, info = env.step(d.action)
        cost = float(info.get("cost", 0.0) > 0)
        ret += float(r)
        violated |= cost > 0
        guards += int(d.safeguard)
        states.append(s2)
        stop = on_step(Step(t, s, d, float(r), s2, bool(term), bool(trunc), cost)) if on_step else None
        s, t = s2, t + 1
        if term or trunc or stop:
            break
    return Episode(ret, t, violated, guards, np.asarray(states))


def rollout(env: gym.Env, policy, episodes: int, seed: int = 0) -> list[Episode]:
    """``episodes`` episodes of the policy's mean action, the i-th reset with ``seed + i``."""
    act = mean_actor(policy)
    return [run_episode(env, act, seed=seed + i) for i in range(episodes)]
