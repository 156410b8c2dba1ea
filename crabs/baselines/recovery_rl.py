"""Baseline (c) of Sec. 6: RecoveryRL (Thananjeyan et al., 2021), model-free recovery (App. C.3).

A task policy pi_task (SAC on the task reward, no violation penalty) proposes a; if the safety
critic says Q_risk(s, a) > eps_risk the recovery policy pi_rec acts instead. pi_task learns from
(s, a_task, r, s'), as if the recovery were part of the environment; Q_risk learns from what was
executed, its backup taking a' from the same shielded policy; pi_rec (deterministic, tanh) is
trained to minimise Q_risk(s, pi_rec(s)) on the critic's data. Before the online phase Q_risk and
pi_rec are pre-trained on the offline data (20K random + 20K initial-policy transitions; here they
go through the monitor and count). Paper's settings: eps_risk 0.5, gamma_risk 0.6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crabs.baselines.common import train_baseline
from crabs.baselines.config import BaselineConfig
from crabs.baselines.safety_critic import RiskLearner
from crabs.nets import TanhGaussianPolicy
from crabs.rollout import Decision
from crabs.system import System


class RecoveryRL(RiskLearner):
    algorithm = "recovery_rl"
    label = "RecoveryRL"

    def __init__(self, system, cfg, run_dir, progress: bool = True):
        super().__init__(system, cfg, run_dir, progress)
        self.recovery = TanhGaussianPolicy(self.obs_dim, self.act_dim, cfg.sac.hidden, cfg.sac.act)
        self.rec_opt = torch.optim.Adam(self.recovery.parameters(), lr=cfg.risk.lr)

    def shield(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pi_rec(s) where Q_risk(s, a) > eps_risk, a elsewhere; and where it intervened."""
        risky = self.critic(s, a) > self.cfg.risk.eps
        return torch.where(risky[..., None], self.recovery.mean_action(s), a), risky

    def next_action(self, s2: torch.Tensor) -> torch.Tensor:
        return self.shield(s2, self.policy.sample(s2)[0])[0]

    def act(self, s: np.ndarray) -> Decision:
        """The shielded action; pi_task learns from its own proposal."""
        with torch.no_grad():
            st = torch.as_tensor(s, dtype=torch.float32)[None]
            a_task = self.policy.sample(st)[0]
            a_env, risky = self.shield(st, a_task)
        self.shielded += int(risky[0])
        return Decision(a_env[0].double().numpy(), proposed=a_task[0].double().numpy())

    def eval_act(self, s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            st = torch.as_tensor(s, dtype=torch.float32)[None]
            return self.shield(st, self.policy.mean_action(st))[0][0].double().numpy()

    def learn_risk(self) -> None:
        super().learn_risk()
        s = self.risk_buffer.sample(self.cfg.risk.batch, self.rng)["s"]
        params = list(self.recovery.parameters())
        loss = self.critic(s, self.recovery.mean_action(s)).mean()
        grads = torch.autograd.grad(loss, params)   # none land on the critic
        self.rec_opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.rec_opt.step()

    def baseline_state(self) -> dict:
        return {**super().baseline_state(), "recovery": self.recovery.state_dict(),
                "rec_opt": self.rec_opt.state_dict()}

    def load_baseline_state(self, d: dict) -> None:
        super().load_baseline_state(d)
        self.recovery.load_state_dict(d["recovery"])
        self.rec_opt.load_state_dict(d["rec_opt"])


def train_recovery_rl(system: str | System | None, config: BaselineConfig | None = None,
                      out: str | Path = "runs/recovery_rl", resume: bool = False,
                      progress: bool = True) -> dict:
    """Run the RecoveryRL baseline (see :func:`crabs.baselines.common.train_baseline`)."""
    return train_baseline(RecoveryRL, system, config, out, resume, progress)
