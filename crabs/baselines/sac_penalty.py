"""Baseline (a) of Sec. 6: Soft Actor-Critic with a violation penalty (App. C.3).

The authors' own SAC with learned temperature (Eq. 12), started from the task's safe initial
policy ("SAC and CPO are given an initial safe policy"), one SAC update per real step, and a
violation penalised by ``penalty`` (30, chosen by the authors from 3, 10, 30, 100): the transition
into the unsafe state is stored with reward -penalty (what the built-in tasks' own reward is there,
with their default ``violation_penalty`` 30) and as terminal, and the monitor ends the episode.
Nothing certifies anything, so it violates while it learns; every one of its violations is counted
by the same safety monitor CRABS runs behind, evaluations included.
"""

from __future__ import annotations

from pathlib import Path

from crabs.baselines.common import Learner, train_baseline
from crabs.baselines.config import BaselineConfig
from crabs.system import System


class SACPenalty(Learner):
    """SAC on the task reward, -penalty at a violation (the base learner as it is)."""

    algorithm = "sac"
    label = "SAC (penalty)"


def train_sac_penalty(system: str | System | None, config: BaselineConfig | None = None,
                      out: str | Path = "runs/sac", resume: bool = False, progress: bool = True) -> dict:
    """Run the SAC-with-penalty baseline (see :func:`crabs.baselines.common.train_baseline`)."""
    return train_baseline(SACPenalty, system, config, out, resume, progress)
