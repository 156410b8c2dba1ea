"""Baseline (d) of Sec. 6: SQRL (Srinivasan et al., 2020), as RecoveryRL's code runs it (App. C.3).

A safety critic Q_risk (pre-trained on the offline data, then trained online) filters the policy's
actions: up to ``risk.samples`` actions are drawn from pi(s) and the first with Q_risk(s, a) <= eps
is taken (the one with the lowest Q_risk if none is). The policy is SAC whose loss also pays
nu Q_risk(s, a) (the Lagrangian, nu = 30 in the paper, tuned on Swing). Paper's settings otherwise
as RecoveryRL: eps 0.5, gamma_risk 0.6, the same offline data (which counts here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crabs.baselines.common import train_baseline
from crabs.baselines.config import BaselineConfig
from crabs.baselines.safety_critic import RiskLearner
from crabs.system import System


class SQRL(RiskLearner):
    algorithm = "sqrl"
    label = "SQRL"

    def filtered(self, s: np.ndarray, first: torch.Tensor | None = None) -> np.ndarray:
        """The first of (``first``, then samples of pi(s)) with Q_risk <= eps, else the safest."""
        with torch.no_grad():
            st = torch.as_tensor(s, dtype=torch.float32)[None]
            a = self.policy.sample(st.expand(self.cfg.risk.samples, -1))[0]
            if first is not None:
                a = torch.cat([first, a])
            q = self.critic(st.expand(len(a), -1), a)
            ok = torch.nonzero(q <= self.cfg.risk.eps)
            i = int(ok[0, 0]) if len(ok) else int(q.argmin())
        self.shielded += int(i > 0)
        return a[i].double().numpy()

    def act(self, s: np.ndarray) -> np.ndarray:
        return self.filtered(s)

    def eval_act(self, s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            mean = self.policy.mean_action(torch.as_tensor(s, dtype=torch.float32)[None])
        return self.filtered(s, first=mean)

    def pi_penalty(self):
        nu = self.cfg.risk.nu
        return lambda s, a: nu * self.critic(s, a)


def train_sqrl(system: str | System | None, config: BaselineConfig | None = None,
               out: str | Path = "runs/sqrl", resume: bool = False, progress: bool = True) -> dict:
    """Run the SQRL baseline (see :func:`crabs.baselines.common.train_baseline`)."""
    return train_baseline(SQRL, system, config, out, resume, progress)
