"""Judging a learned certificate against ground truth (Definition 1 of the paper).

For the 2-D pendulum tasks the oracle decides exactly whether a state is viable (some admissible
torque keeps |theta| <= 1.5 forever). A sound certificate certifies only viable states; how much of
the viability kernel it covers says how much room the policy had.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from crabs.barrier import Barrier
from crabs.config import Config
from crabs.envs import get_task


def load_barrier(run_dir: str | Path, which: str = "last") -> tuple[Barrier | None, Config]:
    """The certificate of a run folder's last checkpoint (weights only): the training state's
    (``which="last"``) or the best certified pair's (``"best"``, None if the run kept none)."""
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    from crabs.loop import CRABS

    cfg, blob = CRABS.read_run(run_dir)
    return _barrier(cfg, blob, which), cfg


def _barrier(cfg: Config, blob: dict, which: str) -> Barrier | None:
    """The checkpoint's training-state (``"last"``) or best-pair (``"best"``) certificate."""
    if which == "best" and not blob.get("best"):
        return None
    from crabs.handcrafted import barrier_type

    t = get_task(cfg.task)
    h = barrier_type(cfg.barrier).for_box(t.spec, cfg.barrier, *t.box())
    h.load_state_dict(blob["best"]["h"] if which == "best" else blob["barrier"]["h"])
    return h.eval()


@functools.lru_cache(maxsize=4)
def _kernel_grid(n_theta: int, n_theta_dot: int) -> tuple[np.ndarray, np.ndarray]:
    """The judging grid over |theta| <= 1.5, |theta_dot| <= 8 and the oracle's viability there
    (computed once per grid size: it does not depend on the certificate)."""
    from crabs.oracle import is_viable

    th, thd = np.meshgrid(np.linspace(-1.5, 1.5, n_theta), np.linspace(-8, 8, n_theta_dot), indexing="ij")
    s = np.stack([th.ravel(), thd.ravel()], -1)
    viable = is_viable(s)
    s.setflags(write=False)
    viable.setflags(write=False)
    return s, viable


@torch.no_grad()
def judge_certificate(h: Barrier, n_theta: int = 301, n_theta_dot: int = 321) -> dict:
    """Fractions of the state box |theta| <= 1.5, |theta_dot| <= 8 (a regular grid) that are
    certified, viable, and certified but not viable (must be 0 for a sound certificate)."""
    s, viable = _kernel_grid(n_theta, n_theta_dot)
    cert = (h(torch.tensor(s, dtype=torch.float32)) >= 0).numpy()
    bad = cert & ~viable
    return {"certified": float(cert.mean()), "viable": float(viable.mean()),
            "certified_not_viable": float(bad.mean()), "certified_not_viable_states": int(bad.sum()),
            "kernel_covered": float((cert & viable).sum() / max(viable.sum(), 1))}


def judge_run(run_dir: str | Path) -> dict:
    """The last certificate judged, and under ``"best"`` the best certified pair's (what a run with
    ``final_policy: best`` delivers; None if the run kept none)."""
    from crabs.loop import CRABS

    cfg, blob = CRABS.read_run(run_dir)
    if cfg.task not in ("upright", "tilt"):
        raise ValueError(f"ground truth exists only for the 2-D pendulum tasks, not {cfg.task!r}")
    best = _barrier(cfg, blob, "best")
    return {"task": cfg.task, **judge_certificate(_barrier(cfg, blob, "last")),
            "best": judge_certificate(best) if best is not None else None}
