"""The safety critic of RecoveryRL (Thananjeyan et al., 2021) and SQRL (Srinivasan et al., 2020),
and the offline data both are given (Sec. 6, App. C.3).

Q_risk(s, a) = E[sum_t gamma_risk^t c_t], c_t = 1 at a violation (the episode ends there): the
discounted probability of a violation ahead when taking a in s and then following the executing
policy. It is learned by the backup

    Q_risk(s, a) <- c + (1 - done) gamma_risk Q_risk_targ(s', a'),    a' the policy's action at s',

with a sigmoid output in [0, 1], binary cross-entropy against the target, and a target network
(as RecoveryRL's code). The offline data: transitions of a random policy (uniform actions) and of
the initial safe policy (its exploration noise), taken through the safety monitor (tag "offline")
so that their violations count, and kept in the critic's own buffer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from crabs.baselines.common import Learner
from crabs.buffer import ReplayBuffer
from crabs.envs import SafetyMonitor
from crabs.nets import mlp, soft_update
from crabs.rollout import Step, run_episode


class SafetyCritic(nn.Module):
    """Q_risk(s, a) in [0, 1] and its Bellman update."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(128, 128), gamma: float = 0.6,
                 lr: float = 3e-4, tau: float = 0.005):
        super().__init__()
        self.gamma, self.tau = gamma, tau
        self.q = mlp(obs_dim + act_dim, hidden, 1)
        self.q_targ = copy.deepcopy(self.q)
        for p in self.q_targ.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=lr)

    def logits(self, s: torch.Tensor, a: torch.Tensor, target: bool = False) -> torch.Tensor:
        net = self.q_targ if target else self.q
        return net(torch.cat([s, a], -1)).squeeze(-1)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(s, a))

    def update(self, batch: dict, next_action: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """One step on a minibatch of (s, a, c, s', done) (``batch["r"]`` holds the cost c)."""
        s, a, c, s2, done = batch["s"], batch["a"], batch["r"], batch["s2"], batch["done"]
        with torch.no_grad():
            q_next = torch.sigmoid(self.logits(s2, next_action(s2), target=True))
            target = c + (1 - done) * self.gamma * q_next
        loss = nn.functional.binary_cross_entropy_with_logits(self.logits(s, a), target.clamp(0, 1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        soft_update(self.q_targ, self.q, self.tau)
        return float(loss.detach())

    def extra_state(self) -> dict:
        return {"q": self.q.state_dict(), "q_targ": self.q_targ.state_dict(), "opt": self.opt.state_dict()}

    def load_extra_state(self, d: dict) -> None:
        self.q.load_state_dict(d["q"])
        self.q_targ.load_state_dict(d["q_targ"])
        self.opt.load_state_dict(d["opt"])


def collect_offline(env: SafetyMonitor, buffer: ReplayBuffer, steps: int,
                    act: Callable[[np.ndarray], np.ndarray]) -> int:
    """``steps`` real transitions of ``act`` through the monitor into ``buffer`` as (s, a, c, s',
    done); returns the number of violations among them."""
    n, violations = 0, 0

    def on_step(st: Step) -> bool:
        nonlocal n, violations
        buffer.add(st.s, st.decision.action, st.cost, st.s2, float(st.terminated))
        n, violations = n + 1, violations + int(st.cost)
        return n >= steps

    while n < steps:
        run_episode(env, act, on_step)
    return violations


class RiskLearner(Learner):
    """The part RecoveryRL and SQRL share: a safety critic learned from every real transition, and
    before the online phase the offline data and ``risk.pretrain_steps`` critic updates on it."""

    def __init__(self, system, cfg, run_dir, progress: bool = True):
        super().__init__(system, cfg, run_dir, progress)
        r = cfg.risk
        self.critic = SafetyCritic(self.obs_dim, self.act_dim, r.hidden, r.gamma, r.lr, r.tau)
        self.risk_buffer = ReplayBuffer(self.obs_dim, self.act_dim,
                                        capacity=r.offline_random + r.offline_initial + cfg.steps + 1)
        self.risk_loss = float("nan")
        self.shielded = 0   # real steps whose action the critic changed (RecoveryRL, SQRL)

    def next_action(self, s2: torch.Tensor) -> torch.Tensor:
        """a' of the critic's backup: the action the executing policy takes at s'."""
        return self.policy.sample(s2)[0]

    def store(self, s, a_env, a_task, r, s2, cost, term) -> None:
        super().store(s, a_env, a_task, r, s2, cost, term)
        self.risk_buffer.add(s, a_env, cost, s2, float(term))

    def learn_risk(self) -> None:
        batch = self.risk_buffer.sample(self.cfg.risk.batch, self.rng)
        self.risk_loss = self.critic.update(batch, self.next_action)

    def learn(self) -> None:
        super().learn()
        if len(self.risk_buffer) >= self.cfg.risk.batch:
            self.learn_risk()

    def pretrain(self) -> None:
        r = self.cfg.risk
        init = self.sys.initial_policy
        lo, hi = -np.ones(self.act_dim), np.ones(self.act_dim)

        def random_act(s):
            return self.rng.uniform(lo, hi)

        def initial_act(s):
            with torch.no_grad():
                return init.sample(torch.as_tensor(s, dtype=torch.float32)[None])[0][0].double().numpy()

        env = self.env("offline")
        try:
            collect_offline(env, self.risk_buffer, r.offline_random, random_act)
            collect_offline(env, self.risk_buffer, r.offline_initial, initial_act)
        finally:
            env.close()
        if len(self.risk_buffer):
            for _ in range(r.pretrain_steps):
                self.learn_risk()

    def baseline_state(self) -> dict:
        return {"critic": self.critic.extra_state(), "risk_buffer": self.risk_buffer.state_dict(),
                "shielded": self.shielded}

    def load_baseline_state(self, d: dict) -> None:
        self.critic.load_extra_state(d["critic"])
        self.risk_buffer.load_state_dict(d["risk_buffer"])
        self.shielded = int(d["shielded"])

    def row_extras(self) -> dict:
        return {"risk_loss": self.risk_loss, "shielded": self.shielded}
