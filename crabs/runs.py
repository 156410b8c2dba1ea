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

import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from crabs.envs import MonitorCounters, SafetyMonitor, ledger_totals, read_ledger

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


def claim_run_dir(out: str | os.PathLike, resume: bool) -> Path:
    """The run folder ``out``, ready to write: to resume, it must hold a run (its config.yaml); for a
    new run, it must not (no ledger, no checkpoints), so that no run is ever overwritten."""
    if resume and not (Path(out) / "config.yaml").exists():
        raise FileNotFoundError(f"{str(out)!r} holds no run to resume (no config.yaml)")
    path = prepare_run_dir(out)
    if not resume and ((path / "ledger.jsonl").exists() or (path / "checkpoints").exists()):
        raise ValueError(f"{str(out)!r} already holds a run: pass resume or choose another folder")
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


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Rows (dicts, keys in order of first appearance) as CSV, written atomically."""
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def recount(counters: MonitorCounters, ledger: str | os.PathLike) -> None:
    """Raise ``counters`` to the largest totals ``ledger`` records, so every real step and violation
    taken before an interruption counts, checkpointed or not (resume)."""
    led = ledger_totals(read_ledger(ledger))
    counters.env_steps = max(counters.env_steps, led.env_steps)
    counters.episodes = max(counters.episodes, led.episodes)
    counters.violations = max(counters.violations, led.violations)


def rng_state(rng: np.random.Generator) -> dict:
    """A NumPy PCG64 generator's state in a form ``torch.load(weights_only=True)`` accepts."""
    st = rng.bit_generator.state
    return {"bitgen": st["bit_generator"], "state": str(st["state"]["state"]),
            "inc": str(st["state"]["inc"]), "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]}


def set_rng_state(rng: np.random.Generator, r: dict) -> None:
    """Inverse of :func:`rng_state`."""
    rng.bit_generator.state = {"bit_generator": r["bitgen"], "state": {
        "state": int(r["state"]), "inc": int(r["inc"])}, "has_uint32": r["has_uint32"],
        "uinteger": r["uinteger"]}
