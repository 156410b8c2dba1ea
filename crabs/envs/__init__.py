"""The paper's four tasks (Sec. 5, Appendix C.1), registered with Gymnasium as ``crabs/<Task>-v0``.

>>> import gymnasium, crabs
>>> env = gymnasium.make("crabs/Swing-v0")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from crabs.envs import cartpole, pendulum
from crabs.envs.functional import StateEnv, make_state_env
from crabs.envs.monitor import MonitorCounters, SafetyMonitor, ledger_totals, read_ledger
from crabs.envs.spec import SafetySpec

__all__ = ["TASKS", "Task", "get_task", "make_env", "SafetySpec", "SafetyMonitor",
           "MonitorCounters", "ledger_totals", "read_ledger", "StateEnv", "make_state_env"]


@dataclass(frozen=True)
class Task:
    """A built-in task: its Gymnasium id, safety spec, reward r(s) and plotting/sampling bounds for
    the unconstrained coordinates (speeds), which the safe set leaves free."""

    name: str
    env_id: str
    spec: SafetySpec
    reward: Callable[[np.ndarray], np.ndarray]
    speed_bounds: dict[str, float]
    description: str
    action_bound: float | None = None   # known actuator saturation (System.action_bound)

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        return self.spec.safe_box(self.speed_bounds)


TASKS: dict[str, Task] = {
    "upright": Task("upright", "crabs/Upright-v0", pendulum.PENDULUM_SPEC, pendulum.upright_reward,
                    {"theta_dot": pendulum.MAX_SPEED},
                    "Pendulum, reward -theta^2, safe |theta| <= 1.5, horizon 200"),
    "tilt": Task("tilt", "crabs/Tilt-v0", pendulum.PENDULUM_SPEC, pendulum.tilt_reward,
                 {"theta_dot": pendulum.MAX_SPEED},
                 "Pendulum, reward -(theta_lim - theta)^2, safe |theta| <= 1.5, horizon 200"),
    "move": Task("move", "crabs/Move-v0", cartpole.MOVE_SPEC, cartpole.move_reward,
                 {"x_dot": 4.0, "theta_dot": 4.0},
                 "Cart-pole, reward x^2, safe |theta| <= 0.2 and |x| <= 0.9, horizon 1000",
                 cartpole.action_bound()),
    "swing": Task("swing", "crabs/Swing-v0", cartpole.SWING_SPEC, cartpole.swing_reward,
                  {"x_dot": 4.0, "theta_dot": 8.0},
                  "Cart-pole, reward theta^2, safe |theta| <= 1.5 and |x| <= 0.9, horizon 1000",
                  cartpole.action_bound()),
}


def get_task(name: str) -> Task:
    key = str(name).lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[key]


def _register() -> None:
    for t in TASKS.values():
        if t.env_id in gym.registry:
            continue
        if t.name in ("upright", "tilt"):
            entry = "crabs.envs.pendulum:PendulumTaskEnv"
        else:
            entry = "crabs.envs.cartpole:CartPoleTaskEnv"
        gym.register(id=t.env_id, entry_point=entry, max_episode_steps=t.spec.horizon,
                     kwargs={"task": t.name})


_register()


def make_env(task: str, *, ledger=None, counters: MonitorCounters | None = None, tag: str = "",
             **env_kwargs) -> SafetyMonitor:
    """A built-in task's environment behind the safety monitor: the way algorithms get one."""
    t = get_task(task)
    env = gym.make(t.env_id, disable_env_checker=True, **env_kwargs)
    return SafetyMonitor(env, t.spec, ledger=ledger, counters=counters, tag=tag)
