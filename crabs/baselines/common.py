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
import json
import time
from pathlib import Path

import numpy as np
import torch

from crabs.baselines.config import BaselineConfig
from crabs.buffer import ReplayBuffer
from crabs.envs import MonitorCounters, SafetyMonitor, get_task
from crabs.nets import TanhGaussianPolicy
from crabs.runs import claim_run_dir, recount, rng_state, set_rng_state, write_csv, write_json
from crabs.sac import ConstrainedSAC
from crabs.system import System

CKPT_VERSION = 1


class Learner:
    """A model-free baseline on one system, writing into ``run_dir``: SAC on the task reward with a
    violation penalty. Subclasses change how actions are chosen (``act``, ``eval_act``), what is
    learned from a step (``store``, ``learn``) and what happens before the online phase
    (``pretrain``)."""

    algorithm = "sac"
    label = "SAC (penalty)"
    uses_sac = True   # the task policy is trained by SAC from a replay buffer (CPO: False)

    def __init__(self, system: System, cfg: BaselineConfig, run_dir: str | Path, progress: bool = True):
        self.sys, self.cfg, self.dir, self.progress = system, cfg, Path(run_dir), progress
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        init = system.initial_policy
        self.obs_dim, self.act_dim = init.obs_dim, init.act_dim
        if cfg.start_from_initial:
            self.policy = copy.deepcopy(init).train()
        else:
            self.policy = TanhGaussianPolicy(init.obs_dim, init.act_dim, cfg.sac.hidden, cfg.sac.act)
        self.sac = ConstrainedSAC(self.policy, cfg.sac) if self.uses_sac else None
        capacity = max(cfg.steps, 1) if self.uses_sac else 1
        self.buffer = ReplayBuffer(init.obs_dim, init.act_dim, capacity=capacity)
        self.counters = MonitorCounters()
        self.rows: list[dict] = []
        self.next_eval = cfg.eval_every
        self.last_info: dict = {}
        self.offline = {"steps": 0, "violations": 0, "done": False}
        self._rows_at_start = 0

    # -- hooks --------------------------------------------------------------------------------
    def act(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the action sent to the environment, the action the task policy learns from)."""
        with torch.no_grad():
            a, _ = self.policy.sample(torch.as_tensor(s, dtype=torch.float32)[None])
        a = a[0].double().numpy()
        return a, a

    def eval_act(self, s: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.policy.mean_action(torch.as_tensor(s, dtype=torch.float32)).double().numpy()

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

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, d: dict) -> None:
        pass

    def row_extras(self) -> dict:
        return {}

    # -- real steps ---------------------------------------------------------------------------
    def _env(self, tag: str) -> SafetyMonitor:
        return SafetyMonitor(self.sys.make_env(), self.sys.spec, ledger=self.dir / "ledger.jsonl",
                             counters=self.counters, tag=tag)

    def episode(self, env: SafetyMonitor, budget: int) -> dict:
        """One exploration episode, learning after every real step; it stops early when the
        monitor's step count reaches ``budget``."""
        s, _ = env.reset()
        ret, n, violated = 0.0, 0, False
        while True:
            a_env, a_task = self.act(s)
            s2, r, term, trunc, info = env.step(a_env)
            cost = float(info["cost"] > 0)
            self.store(s, a_env, a_task, float(r), s2, cost, bool(term))
            ret, n, violated = ret + float(r), n + 1, violated or cost > 0
            self.learn()
            s = s2
            if term or trunc or self.counters.env_steps >= budget:
                break
        return {"return": ret, "length": n, "violated": violated}

    def evaluate(self) -> dict:
        """One episode of the mean policy from s0 (real steps: counted, and they may violate)."""
        env = self._env("eval")
        try:
            s, _ = env.reset()
            ret, n, violated = 0.0, 0, False
            while True:
                s, r, term, trunc, info = env.step(self.eval_act(s))
                ret, n, violated = ret + float(r), n + 1, violated or info["cost"] > 0
                if term or trunc:
                    break
        finally:
            env.close()
        return {"eval_return": ret, "eval_length": n, "eval_violated": violated}

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": CKPT_VERSION, "algorithm": self.algorithm, "system": self.sys.name,
                "config": self.cfg.to_dict(), "counters": self.counters.to_dict(),
                "sac": self.sac.state_dict() if self.sac else {"policy": self.policy.state_dict()},
                "buffer": self.buffer.state_dict(), "rows": self.rows,
                "offline": self.offline, "extra": self.extra_state(),
                "rng": {**rng_state(self.rng), "torch": torch.get_rng_state()}}

    def load_state_dict(self, d: dict) -> None:
        if d.get("algorithm") != self.algorithm or d.get("version") != CKPT_VERSION:
            raise ValueError(f"checkpoint is not from a {self.algorithm} run of this version "
                             f"(algorithm {d.get('algorithm')!r}, version {d.get('version')})")
        if d["system"] != self.sys.name:
            raise ValueError(f"checkpoint is from task {d['system']!r}, not {self.sys.name!r}")
        self.counters = MonitorCounters(**d["counters"])
        if self.sac:
            self.sac.load_state_dict(d["sac"])
        else:
            self.policy.load_state_dict(d["sac"]["policy"])
        self.buffer.load_state_dict(d["buffer"])
        self.rows = list(d["rows"])
        self._rows_at_start = len(self.rows)
        self.offline = dict(d["offline"])
        # checkpoints are written at an evaluation (or at the end of the offline phase), so the
        # next one is the next multiple of eval_every of the learner's steps (older checkpoints
        # also stored a next_eval counted on all steps: not used)
        self.next_eval = (max(self.learner_steps(), 0) // self.cfg.eval_every + 1) * self.cfg.eval_every
        self.load_extra_state(d["extra"])
        set_rng_state(self.rng, d["rng"])
        torch.set_rng_state(d["rng"]["torch"])

    def save(self) -> None:
        ck = self.dir / "checkpoints"
        ck.mkdir(parents=True, exist_ok=True)
        tmp = ck / "last.pt.tmp"
        torch.save(self.state_dict(), tmp)
        tmp.replace(ck / "last.pt")
        torch.save({"spec": self.policy.spec(), "state_dict": self.policy.state_dict(),
                    "meta": {"task": self.sys.name, "algorithm": self.algorithm,
                             "env_steps": self.counters.env_steps}}, ck / "policy.pt")

    def resume(self) -> None:
        path = self.dir / "checkpoints" / "last.pt"
        if path.exists():
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # steps taken after the checkpoint (or before the first one) still count
        recount(self.counters, self.dir / "ledger.jsonl")

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
        write_csv(self.dir / "metrics.csv", self.rows)
        self.save()
        return row

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        started = seg_start = time.time()   # the first row's time includes the offline phase
        if not self.offline["done"]:
            # the offline phase comes first, so every step before the online phase is offline (a
            # run that died during it does it again; the earlier steps still count)
            self.pretrain()
            self.offline = {"steps": self.counters.env_steps, "violations": self.counters.violations,
                            "done": True}
            self.save()
        budget = self.offline["steps"] + cfg.steps  # the online steps come on top of the offline ones
        bar = tqdm(total=cfg.steps, initial=min(self.counters.env_steps - self.offline["steps"], cfg.steps),
                   desc=f"{self.algorithm} {self.sys.name}", unit="step", disable=not self.progress)
        env = self._env("explore")
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
        prior = sum(r.get("epoch_s", 0.0) for r in self.rows[: self._rows_at_start])
        evals = [r["eval_return"] for r in self.rows]
        return {"task": self.sys.name, "algorithm": self.algorithm, "seed": cfg.seed,
                "env_steps": self.counters.env_steps, "episodes": self.counters.episodes,
                "violations": self.counters.violations,
                "offline_steps": self.offline["steps"], "offline_violations": self.offline["violations"],
                "final_eval_return": evals[-1],
                "mean_return": float(np.mean(evals)),
                "penalty": cfg.violation_penalty, "evaluations": len(self.rows),
                "wall_clock_s": round(time.time() - started + prior, 1)}


def train_baseline(learner_cls: type[Learner], system: str | System | None,
                   config: BaselineConfig | None = None, out: str | Path = "runs/baseline",
                   resume: bool = False, progress: bool = True) -> dict:
    """Run ``learner_cls`` on a built-in task name or a :class:`System`, writing the run folder
    ``out``; ``resume=True`` continues the run in ``out`` with its own config (a finished run
    returns its summary without a step)."""
    import yaml

    from crabs.plots import figure2
    from crabs.system import builtin_system

    algorithm = learner_cls.algorithm
    out = claim_run_dir(out, resume)
    cfg_path = out / "config.yaml"
    if resume:
        data = yaml.safe_load(cfg_path.read_text())
        if not isinstance(data, dict) or data.get("algorithm") != algorithm:
            found = data.get("algorithm", "crabs") if isinstance(data, dict) else "?"
            raise ValueError(f"{str(out)!r} holds a {found} run, not {algorithm}")
        cfg = BaselineConfig.from_dict(data)
        system = cfg.task if system is None else system
        name = get_task(system).name if isinstance(system, str) else system.name
        if name != cfg.task:
            raise ValueError(f"{str(out)!r} holds a run of task {cfg.task!r}, not {name!r}")
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
    else:
        if system is None:
            raise ValueError("a task or System is required for a new run")
        name = get_task(system).name if isinstance(system, str) else system.name
        cfg = config if config is not None else BaselineConfig(algorithm=algorithm)
        if cfg.algorithm != algorithm:
            raise ValueError(f"config.algorithm is {cfg.algorithm!r}, not {algorithm!r}")
        if cfg.task != name:
            cfg = cfg.replace(task=name)
        cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if isinstance(system, str):
        system = builtin_system(system, cfg.sac.hidden, cfg.sac.act)
    learner = learner_cls(system, cfg, out, progress)
    if resume:
        learner.resume()
    result = learner.run()
    write_json(out / "summary.json", result)
    figure2([(learner.label, out)], out / "figure2.png", title=f"{system.name}: {learner.label}")
    return result
