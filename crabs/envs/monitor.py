"""The safety monitor: the one door through which every real environment step passes.

It counts environment steps, episodes and violations, and appends every violation and every
episode's summary to an append-only JSON-lines ledger, flushed and fsync'ed as written, so a crash
loses nothing that was recorded. Within long episodes it also writes a progress record every
``heartbeat`` steps, so that after a hard kill mid-episode :func:`ledger_totals` still recovers the
step count to within ``heartbeat`` steps (and every violation exactly, each being written at once).

A violation is a step whose next state lies outside the safe set (checked here against the task's
:class:`SafetySpec`, not taken on trust from the environment), or whose ``info["cost"]`` is
positive, or whose state is not finite.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from crabs.envs.spec import SafetySpec

__all__ = ["MonitorCounters", "SafetyMonitor", "ledger_totals", "read_ledger"]


@dataclass
class MonitorCounters:
    env_steps: int = 0
    episodes: int = 0
    violations: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class SafetyMonitor(gym.Wrapper):
    """Counts and records every real interaction. Algorithms only ever hold a ``SafetyMonitor``.

    Args:
        env: the real environment (a Gymnasium env, wrappers allowed).
        spec: its safety specification; defaults to ``env.unwrapped.spec_safety``.
        ledger: path of the JSON-lines ledger (appended to, never truncated); None keeps counts only.
        counters: counters to continue from (resume); a fresh run starts at zero.
        tag: free-form label written with every ledger record (e.g. "train", "eval").
        heartbeat: steps between progress records within an episode (0: none).
        start_check: called with the observation of every reset that is not asked for a given state
            (``options={"state": ...}``) before the episode begins, to refuse a wrong start (e.g.
            :meth:`crabs.system.System.check_start`, which raises unless it is s0).
    """

    def __init__(self, env: gym.Env, spec: SafetySpec | None = None,
                 ledger: str | os.PathLike | None = None,
                 counters: MonitorCounters | None = None, tag: str = "", heartbeat: int = 100,
                 start_check: Callable[[np.ndarray], None] | None = None):
        super().__init__(env)
        spec = spec if spec is not None else getattr(env.unwrapped, "spec_safety", None)
        if not isinstance(spec, SafetySpec):
            raise TypeError("SafetyMonitor needs a SafetySpec (pass spec=...) for this environment")
        self.safety_spec = spec
        self.counters = counters if counters is not None else MonitorCounters()
        self.tag = tag
        self.heartbeat = int(heartbeat)
        self.start_check = start_check
        self._ledger = None
        if ledger is not None:
            path = Path(ledger)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._ledger = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._in_episode = False
        self._ep_return = 0.0
        self._ep_len = 0
        self._ep_violated = False
        self._state: np.ndarray | None = None

    # -- recording -------------------------------------------------------------------------
    def _write(self, record: dict) -> None:
        if self._ledger is None:
            return
        record = {"time": time.time(), "tag": self.tag, **record}
        self._ledger.write(json.dumps(record) + "\n")
        self._ledger.flush()
        os.fsync(self._ledger.fileno())

    def note(self, event: str, **fields) -> None:
        """Append a record of the caller's own (e.g. a model failure) to the ledger, with this
        monitor's tag and the current counters; the counters themselves are not touched."""
        self._write({"event": event, "episode": self.counters.episodes + 1,
                     "env_steps": self.counters.env_steps, "episode_step": self._ep_len, **fields})

    def _end_episode(self, reason: str) -> None:
        self.counters.episodes += 1
        self._write({"event": "episode", "episode": self.counters.episodes,
                     "length": self._ep_len, "return": self._ep_return,
                     "violated": self._ep_violated, "end": reason,
                     "env_steps": self.counters.env_steps,
                     "violations": self.counters.violations})
        self._in_episode = False

    # -- gym API ---------------------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        if self._in_episode and self._ep_len > 0:
            self._end_episode("reset")
        obs, info = self.env.reset(seed=seed, options=options)
        obs = np.asarray(obs, dtype=np.float64)
        if self.start_check is not None and "state" not in (options or {}):
            self.start_check(obs)
        if not self.safety_spec.is_safe(obs):
            raise RuntimeError(f"reset returned an unsafe initial state {obs.tolist()}")
        self._in_episode = True
        self._ep_return, self._ep_len, self._ep_violated = 0.0, 0, False
        self._state = obs
        return obs, info

    def step(self, action):
        if not self._in_episode:
            raise RuntimeError("step() called outside an episode: call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if not np.isfinite(action).all():
            raise ValueError(f"refusing to send a non-finite action to the environment: {action}")
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = np.asarray(obs, dtype=np.float64)
        self.counters.env_steps += 1
        self._ep_len += 1
        self._ep_return += float(reward)
        violated = (float(info.get("cost", 0.0)) > 0 or not np.isfinite(obs).all()
                    or not self.safety_spec.is_safe(obs))
        info = {**info, "cost": float(violated)}
        if violated:
            self.counters.violations += 1
            self._ep_violated = True
            self._write({"event": "violation", "violation": self.counters.violations,
                         "episode": self.counters.episodes + 1,
                         "env_steps": self.counters.env_steps, "episode_step": self._ep_len,
                         "state": self._state.tolist(), "action": action.reshape(-1).tolist(),
                         "next_state": obs.tolist()})
            terminated = True  # a violation always ends the episode
        self._state = obs
        if self.heartbeat and self._ep_len % self.heartbeat == 0 and not (terminated or truncated):
            self._write({"event": "progress", "episode": self.counters.episodes + 1,
                         "episode_step": self._ep_len, "env_steps": self.counters.env_steps,
                         "violations": self.counters.violations})
        if terminated or truncated:
            self._end_episode("violation" if violated else
                              ("terminated" if terminated else "horizon"))
        return obs, reward, terminated, truncated, info

    def close(self):
        if self._in_episode and self._ep_len > 0:
            self._end_episode("close")
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        super().close()


def read_ledger(path: str | os.PathLike) -> list[dict]:
    """All records of a ledger, in order (a torn last line from a crash is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def ledger_totals(records: list[dict], tag: str | None = None) -> MonitorCounters:
    """Counters implied by a ledger: the largest running totals any record carries (of the records
    with ``tag`` only, if given: e.g. the totals at the end of a run's "offline" phase). An episode
    that was under way when the process died (a progress record, no episode record) counts."""
    c = MonitorCounters()
    for r in records:
        if tag is not None and r.get("tag") != tag:
            continue
        if "env_steps" in r:
            c.env_steps = max(c.env_steps, int(r["env_steps"]))
        if "violations" in r:
            c.violations = max(c.violations, int(r["violations"]))
        if "violation" in r:
            c.violations = max(c.violations, int(r["violation"]))
        if r.get("event") in ("episode", "progress", "violation"):
            c.episodes = max(c.episodes, int(r["episode"]))
    return c
