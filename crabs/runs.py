"""Run folders: where a run's config, ledger, metrics, checkpoints, summary and plots live.

Layout of a run folder::

    DIR/config.yaml       the full configuration (every hyperparameter)
    DIR/ledger.jsonl      append-only safety ledger: every violation, every episode (monitor.py)
    DIR/metrics.csv       one row per epoch / evaluation
    DIR/checkpoints/      weights only (torch.load(weights_only=True) loads them)
    DIR/summary.json      the result
    DIR/*.png             plots
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from crabs.envs import SafetyMonitor

LEDGER = "ledger.jsonl"
SUMMARY = "summary.json"


def prepare_run_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` (and parents) and check that it is writable; one-line error otherwise."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {str(path)!r} is not writable: {e.strerror or e}") from None
    return path


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def run_episode(env: SafetyMonitor, act, seed: int | None = None, options=None) -> dict:
    """One episode through the monitor with ``act(state) -> action``; returns its return, length,
    whether it violated, and the visited states."""
    if not isinstance(env, SafetyMonitor):
        raise TypeError("real environments are only stepped through a SafetyMonitor")
    s, _ = env.reset(seed=seed, options=options)
    states, ret, violated = [s], 0.0, False
    while True:
        s, r, term, trunc, info = env.step(act(s))
        ret += float(r)
        states.append(s)
        violated |= info["cost"] > 0
        if term or trunc:
            break
    return {"return": ret, "length": len(states) - 1, "violated": violated,
            "states": np.asarray(states)}


def policy_actor(policy):
    """The deterministic (mean) action of a TanhGaussianPolicy as a NumPy function."""

    def act(s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            a = policy.mean_action(torch.as_tensor(s, dtype=torch.float32))
        return a.double().numpy()

    return act


def rollout(env: SafetyMonitor, policy, episodes: int, seed: int = 0) -> list[dict]:
    act = policy_actor(policy)
    return [run_episode(env, act, seed=seed + i) for i in range(episodes)]


def summary(task: str, algorithm: str, seed: int, env: SafetyMonitor, returns: Sequence[float],
            started: float, **extra) -> dict:
    c = env.counters
    return {"task": task, "algorithm": algorithm, "seed": seed, "env_steps": c.env_steps,
            "episodes": c.episodes, "violations": c.violations,
            "mean_return": float(np.mean(returns)) if len(returns) else float("nan"),
            "wall_clock_s": round(time.time() - started, 3), **extra}
