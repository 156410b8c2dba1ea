"""What the baselines of Sec. 6 share: their config, the run behind the safety monitor (exploration
episodes, evaluations of the mean policy, checkpoints, resume) and the run folder.

Every real step a baseline takes goes through the same :class:`SafetyMonitor` as CRABS, evaluation
and the offline data of RecoveryRL and SQRL included (the paper did not count that data; here it is
counted, and reported apart as ``offline_steps`` / ``offline_violations``). The run folder has a
CRABS run's layout (config.yaml, ledger.jsonl, metrics.csv with one row per evaluation,
checkpoints/last.pt and policy.pt, summary.json, figure2.png), so ``crabs compare`` draws them
together.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from crabs.baselines.config import BaselineConfig
from crabs.buffer import ReplayBuffer
from crabs.nets import TanhGaussianPolicy
from crabs.rollout import Decision, Step, mean_actor, run_episode
from crabs.runs import Runner
from crabs.sac import ConstrainedSAC
from crabs.system import System


class Learner(Runner):
    """A model-free baseline on one system, writing into ``run_dir``: SAC on the task reward with a
    violation penalty. Subclasses change how actions are chosen (``act``, ``eval_act``), what is
    learned from a step (``store``, ``learn``) and what happens before the online phase
    (``pretrain``); the run folder, checkpoints and resume are the harness's (runs.Runner)."""

    algorithm = "sac"
    label = "SAC (penalty)"
    config_cls = BaselineConfig
    version = 1
    uses_sac = True   # the task policy is trained by SAC from a replay buffer (CPO: False)

    def __init__(self, system: System, cfg: BaselineConfig, run_dir, progress: bool = True):
        super().__init__(system, cfg, run_dir, progress)
        init = system.initial_policy
        self.obs_dim, self.act_dim = init.obs_dim, init.act_dim
        if cfg.start_from_initial:
            self.policy = copy.deepcopy(init).train()
        else:
            self.policy = TanhGaussianPolicy(init.obs_dim, init.act_dim, cfg.sac.hidden, cfg.sac.act)
        self.sac = ConstrainedSAC(self.policy, cfg.sac) if self.uses_sac else None
        capacity = max(cfg.steps, 1) if self.uses_sac else 1
        self.buffer = ReplayBuffer(init.obs_dim, init.act_dim, capacity=capacity)
        self.next_eval = cfg.eval_every
        self.last_info: dict = {}
        self.offline = {"steps": 0, "violations": 0, "done": False}

    # -- hooks --------------------------------------------------------------------------------
    def act(self, s: np.ndarray) -> np.ndarray | Decision:
        """The action sent to the environment (a Decision whose ``proposed`` is the action the task
        policy learns from, where the two differ)."""
        with torch.no_grad():
            a, _ = self.policy.sample(torch.as_tensor(s, dtype=torch.float32)[None])
        return a[0].double().numpy()

    def eval_act(self, s: np.ndarray) -> np.ndarray:
        return mean_actor(self.policy)(s)

    def store(self, s, a_env, a_task, r: float, s2, cost: float, term: bool) -> None:
        self.buffer.add(s, a_task, self.cfg.reward(r, cost), s2, float(term))

    def pi_penalty(self):
        """A per-sample term ``f(s, a)`` added to SAC's policy loss (SQRL's nu Q_risk), or None."""
        return None

    def learn(self) -> None:
        if len(self.buffer) >= self.cfg.warmup:
            for _ in range(self.cfg.updates_per_step):
                self.last_info = self.sac.update(self.buffer.sample(self.cfg.sac.batch, self.rng), None, None,
                                                 pi_penalty=self.pi_penalty())

    def pretrain(self) -> None:
        """Before the online phase (once; RecoveryRL and SQRL collect offline data here)."""

    def row_extras(self) -> dict:
        return {}

    def baseline_state(self) -> dict:
        """The subclass's own networks and state (checkpointed under "extra")."""
        return {}

    def load_baseline_state(self, d: dict) -> None:
        pass

    # -- real steps ---------------------------------------------------------------------------
    def episode(self, env, budget: int) -> dict:
        """One exploration episode, learning after every real step; it stops early when the
        monitor's step count reaches ``budget``."""

        def on_step(st: Step) -> bool:
            d = st.decision
            self.store(st.s, d.action, d.action if d.proposed is None else d.proposed, st.r, st.s2, st.cost,
                       st.terminated)
            self.learn()
            return self.counters.env_steps >= budget

        ep = run_episode(env, self.act, on_step)
        return {"return": ep.ret, "length": ep.length, "violated": ep.violated}

    def evaluate(self) -> dict:
        """One episode of the mean policy from s0 (real steps: counted, and they may violate)."""
        env = self.env("eval")
        try:
            ep = run_episode(env, self.eval_act)
        finally:
            env.close()
        return {"eval_return": ep.ret, "eval_length": ep.length, "eval_violated": ep.violated}

    # -- checkpoints --------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"sac": self.sac.state_dict() if self.sac else {"policy": self.policy.state_dict()},
                "buffer": self.buffer.state_dict(), "offline": self.offline, "extra": self.baseline_state()}

    def load_extra_state(self, d: dict) -> None:
        if self.sac:
            self.sac.load_state_dict(d["sac"])
        else:
            self.policy.load_state_dict(d["sac"]["policy"])
        self.buffer.load_state_dict(d["buffer"])
        self.offline = dict(d["offline"])
        # checkpoints are written at an evaluation (or at the end of the offline phase), so the
        # next one is the next multiple of eval_every of the learner's steps
        self.next_eval = (max(self.learner_steps(), 0) // self.cfg.eval_every + 1) * self.cfg.eval_every
        self.load_baseline_state(d["extra"])

    def delivered_policy(self) -> tuple:
        return self.policy, self.policy.state_dict(), {"task": self.sys.name, "algorithm": self.algorithm,
                                                       "env_steps": self.counters.env_steps}

    # -- the run ------------------------------------------------------------------------------
    def learner_steps(self) -> int:
        """The online real steps the learner took itself: all but the offline phase's and the
        evaluations' (those count too, but do not bring the next evaluation closer)."""
        evaluated = sum(int(r["eval_length"]) for r in self.rows)
        return self.counters.env_steps - self.offline["steps"] - evaluated

    def _evaluation_row(self, returns: list[float], seg_start: float) -> dict:
        """Evaluate the mean policy and log a metrics row (and checkpoint)."""
        row = {"eval": len(self.rows) + 1, **self.evaluate(),
               "explore_return": float(np.mean(returns)) if returns else float("nan"),
               "explore_episodes": len(returns),
               "q_loss": self.last_info.get("q_loss", float("nan")),
               "alpha": self.last_info.get("alpha", float("nan")), **self.row_extras(),
               "env_steps": self.counters.env_steps, "episodes": self.counters.episodes,
               "violations": self.counters.violations, "epoch_s": round(time.time() - seg_start, 2)}
        self.rows.append(row)
        self.write_metrics()
        self.save()
        return row

    @classmethod
    def default_config(cls, system) -> BaselineConfig:
        return BaselineConfig(algorithm=cls.algorithm)

    def run(self) -> dict:
        """The offline phase (once), then online episodes with an evaluation every ``eval_every``
        of the learner's own steps, until the budget of online steps is spent."""
        cfg = self.cfg
        self.resume()
        started = seg_start = time.time()   # the first row's time includes the offline phase
        if not self.offline["done"]:
            # the offline phase comes first, so every step before the online phase is offline (a
            # run that died during it does it again; the earlier steps still count)
            self.pretrain()
            self.offline = {"steps": self.counters.env_steps, "violations": self.counters.violations,
                            "done": True}
            self.save()
        budget = self.offline["steps"] + cfg.steps  # the online steps come on top of the offline ones
        bar = self.progress_bar(cfg.steps, min(self.counters.env_steps - self.offline["steps"], cfg.steps),
                                "step")
        env = self.env("explore")
        returns: list[float] = []
        try:
            while self.counters.env_steps < budget:
                before = self.counters.env_steps
                returns.append(self.episode(env, budget)["return"])
                bar.update(self.counters.env_steps - before)
                # evaluations are scheduled on the learner's own steps, else on a 1000-step
                # horizon every exploration episode would be followed by one
                trained = self.learner_steps()
                if trained >= self.next_eval or self.counters.env_steps >= budget:
                    while self.next_eval <= trained:
                        self.next_eval += cfg.eval_every
                    row = self._evaluation_row(returns, seg_start)
                    bar.set_postfix(violations=self.counters.violations, ret=f"{row['eval_return']:.3g}")
                    seg_start, returns = time.time(), []
        finally:
            env.close()
            bar.close()
        if not self.rows or self.rows[-1]["env_steps"] < self.counters.env_steps:
            # the run died after its last step but before its final evaluation (resume): take it now
            self._evaluation_row(returns, seg_start)
        evals = [r["eval_return"] for r in self.rows]
        return self.summary(started, offline_steps=self.offline["steps"],
                            offline_violations=self.offline["violations"], final_eval_return=evals[-1],
                            mean_return=float(np.mean(evals)), penalty=cfg.violation_penalty,
                            evaluations=len(self.rows))


def train_baseline(learner_cls: type[Learner], system: str | System | None,
                   config: BaselineConfig | None = None, out: str | Path = "runs/baseline",
                   resume: bool = False, progress: bool = True) -> dict:
    """Run ``learner_cls`` on a built-in task name or a :class:`System`, writing the run folder
    ``out``; ``resume=True`` continues the run in ``out`` with its own config (a finished run
    returns its summary without a step)."""
    return learner_cls.train(system, config, out, resume, progress)
