"""Baseline (a) of Sec. 6: Soft Actor-Critic with a violation penalty (App. C.3).

The authors' own SAC with learned temperature (Eq. 12), started from the task's safe initial
policy ("SAC and CPO are given an initial safe policy"), one SAC update per real step, and a
violation penalised by ``penalty`` (30, chosen by the authors from 3, 10, 30, 100): the transition
into the unsafe state is stored with reward -penalty (what the built-in tasks' own reward is there,
with their default ``violation_penalty`` 30) and as terminal, and the monitor ends the episode.
Nothing certifies anything, so it violates while it learns; every one of its violations is counted
by the same safety monitor CRABS runs behind, evaluations included.

The run folder has the layout of a CRABS run (config.yaml, ledger.jsonl, metrics.csv with one row
per evaluation, checkpoints/last.pt and policy.pt, summary.json, figure2.png), so ``crabs compare``
draws both in one Figure 2, and ``resume`` continues an interrupted run with the same counters.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crabs.buffer import ReplayBuffer
from crabs.config import SACConfig, _build, _deep_update, _plain
from crabs.envs import MonitorCounters, SafetyMonitor, get_task
from crabs.runs import prepare_run_dir, recount, rng_state, set_rng_state, write_csv, write_json
from crabs.sac import ConstrainedSAC
from crabs.system import System

CKPT_VERSION = 1

BUDGET = {"upright": 5000, "tilt": 10000, "move": 90000, "swing": 250000}
"""Default real steps per task: about what the task's default CRABS run takes (bench/RESULTS.md)."""


@dataclass
class SACPenaltyConfig:
    """SAC with a violation penalty (App. C.3). ``sac`` holds the SAC hyperparameters (the same
    defaults as CRABS's policy optimiser, paper values in ``crabs.config.PAPER``); its
    constraint-only keys (``big_c``, ``adv_*``, ``model_*``) play no part here."""

    task: str = "upright"
    seed: int = 0
    total_steps: int = 0          # real steps to take; 0: the task's BUDGET (about a CRABS run's)
    penalty: float = 30.0         # paper: 30 (App. C.3, chosen from 3, 10, 30, 100)
    eval_every: int = 1000        # real steps between evaluations of the mean policy (each taken
                                  # at the end of an episode; evaluation steps count too)
    warmup: int = 1000            # transitions in the buffer before the first SAC update
    updates_per_step: int = 1     # SAC updates per real step
    from_initial: bool = True     # start from the task's safe initial policy (paper: yes)
    sac: SACConfig = field(default_factory=SACConfig)

    @classmethod
    def from_dict(cls, data: dict) -> SACPenaltyConfig:
        cfg = _build(cls, data, "config")
        if cfg.penalty < 0:
            raise ValueError(f"config.penalty: must be >= 0, got {cfg.penalty}")
        if cfg.eval_every < 1:
            raise ValueError(f"config.eval_every: must be >= 1, got {cfg.eval_every}")
        if cfg.sac.model_horizon:
            raise ValueError("config.sac.model_horizon: the SAC baseline has no dynamics model (use 0)")
        return cfg

    def to_dict(self) -> dict:
        import dataclasses

        return _plain(dataclasses.asdict(self))

    def replace(self, **changes) -> SACPenaltyConfig:
        d = self.to_dict()
        _deep_update(d, changes)
        return SACPenaltyConfig.from_dict(d)

    @property
    def steps(self) -> int:
        """Real steps to take: ``total_steps``, or the built-in task's BUDGET."""
        steps = self.total_steps or BUDGET.get(self.task, 0)
        if steps <= 0:
            raise ValueError(f"config.total_steps: {self.task!r} is not a built-in task, so give the "
                             "number of real steps to take")
        return steps


def load_sac_config(path: str | Path | None, task: str, **overrides) -> SACPenaltyConfig:
    """The defaults for built-in ``task``, overlaid with the YAML file ``path`` (if given) and the
    ``overrides`` that are not None (e.g. seed, total_steps)."""
    import yaml

    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(p)!r} must hold a mapping")
        if data.pop("algorithm", "sac") != "sac":
            raise ValueError(f"config file {str(p)!r} is not for the SAC baseline")
    task = get_task(task).name
    if "task" in data and get_task(data["task"]).name != task:
        raise ValueError(f"config file is for task {data['task']!r}, not {task!r}")
    data["task"] = task
    data.update({k: v for k, v in overrides.items() if v is not None})
    return SACPenaltyConfig.from_dict(data)


class SACPenalty:
    """The SAC-with-penalty learner on one system, writing into ``run_dir``."""

    def __init__(self, system: System, cfg: SACPenaltyConfig, run_dir: str | Path, progress: bool = True):
        from crabs.nets import TanhGaussianPolicy

        self.sys, self.cfg, self.dir, self.progress = system, cfg, Path(run_dir), progress
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        init = system.initial_policy
        if cfg.from_initial:
            self.policy = copy.deepcopy(init).train()
        else:
            self.policy = TanhGaussianPolicy(init.obs_dim, init.act_dim, cfg.sac.hidden, cfg.sac.act)
        self.sac = ConstrainedSAC(self.policy, cfg.sac)
        self.buffer = ReplayBuffer(init.obs_dim, init.act_dim, capacity=max(cfg.steps, 1))
        self.counters = MonitorCounters()
        self.rows: list[dict] = []
        self.next_eval = cfg.eval_every
        self.last_info: dict = {}
        self._rows_at_start = 0

    def _env(self, tag: str) -> SafetyMonitor:
        return SafetyMonitor(self.sys.make_env(), self.sys.spec, ledger=self.dir / "ledger.jsonl",
                             counters=self.counters, tag=tag)

    def episode(self, env: SafetyMonitor) -> dict:
        """One exploration episode of pi_expl, a SAC update after every real step (past warm-up);
        it stops early when the step budget is spent."""
        cfg = self.cfg
        s, _ = env.reset()
        ret, n, violated = 0.0, 0, False
        while True:
            with torch.no_grad():
                a, _ = self.policy.sample(torch.as_tensor(s, dtype=torch.float32)[None])
            a = a[0].double().numpy()
            s2, r, term, trunc, info = env.step(a)
            cost = float(info["cost"] > 0)
            self.buffer.add(s, a, -cfg.penalty if cost else float(r), s2, float(term))
            ret, n, violated = ret + float(r), n + 1, violated or cost > 0
            if len(self.buffer) >= cfg.warmup:
                for _ in range(cfg.updates_per_step):
                    self.last_info = self.sac.update(self.buffer.sample(cfg.sac.batch, self.rng), None, None)
            s = s2
            if term or trunc or self.counters.env_steps >= cfg.steps:
                break
        return {"return": ret, "length": n, "violated": violated}

    def evaluate(self) -> dict:
        """One episode of the mean policy from s0 (real steps: counted, and may violate)."""
        env = self._env("eval")
        try:
            s, _ = env.reset()
            ret, n, violated = 0.0, 0, False
            while True:
                with torch.no_grad():
                    a = self.policy.mean_action(torch.as_tensor(s, dtype=torch.float32))
                s, r, term, trunc, info = env.step(a.double().numpy())
                ret, n, violated = ret + float(r), n + 1, violated or info["cost"] > 0
                if term or trunc:
                    break
        finally:
            env.close()
        return {"eval_return": ret, "eval_length": n, "eval_violated": violated}

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": CKPT_VERSION, "algorithm": "sac", "system": self.sys.name,
                "config": self.cfg.to_dict(), "counters": self.counters.to_dict(),
                "sac": self.sac.state_dict(), "buffer": self.buffer.state_dict(), "rows": self.rows,
                "next_eval": self.next_eval,
                "rng": {**rng_state(self.rng), "torch": torch.get_rng_state()}}

    def load_state_dict(self, d: dict) -> None:
        if d.get("algorithm") != "sac" or d.get("version") != CKPT_VERSION:
            raise ValueError("checkpoint is not from a SAC-baseline run of this version "
                             f"(algorithm {d.get('algorithm')!r}, version {d.get('version')})")
        if d["system"] != self.sys.name:
            raise ValueError(f"checkpoint is from task {d['system']!r}, not {self.sys.name!r}")
        self.counters = MonitorCounters(**d["counters"])
        self.sac.load_state_dict(d["sac"])
        self.buffer.load_state_dict(d["buffer"])
        self.rows = list(d["rows"])
        self._rows_at_start = len(self.rows)
        self.next_eval = int(d["next_eval"])
        set_rng_state(self.rng, d["rng"])
        torch.set_rng_state(d["rng"]["torch"])

    def save(self) -> None:
        ck = self.dir / "checkpoints"
        ck.mkdir(parents=True, exist_ok=True)
        tmp = ck / "last.pt.tmp"
        torch.save(self.state_dict(), tmp)
        tmp.replace(ck / "last.pt")
        torch.save({"spec": self.policy.spec(), "state_dict": self.policy.state_dict(),
                    "meta": {"task": self.sys.name, "algorithm": "sac",
                             "env_steps": self.counters.env_steps}},
                   ck / "policy.pt")

    def resume(self) -> None:
        path = self.dir / "checkpoints" / "last.pt"
        if path.exists():
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # steps taken after the checkpoint (or before the first one) still count
        recount(self.counters, self.dir / "ledger.jsonl")

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        started = time.time()
        bar = tqdm(total=cfg.steps, initial=min(self.counters.env_steps, cfg.steps),
                   desc=f"sac {self.sys.name}", unit="step", disable=not self.progress)
        env = self._env("explore")
        seg_start, returns = time.time(), []
        try:
            while self.counters.env_steps < cfg.steps:
                before = self.counters.env_steps
                ep = self.episode(env)
                returns.append(ep["return"])
                bar.update(self.counters.env_steps - before)
                if self.counters.env_steps >= self.next_eval or self.counters.env_steps >= cfg.steps:
                    while self.next_eval <= self.counters.env_steps:
                        self.next_eval += cfg.eval_every
                    row = {"eval": len(self.rows) + 1, **self.evaluate(),
                           "explore_return": float(np.mean(returns)), "explore_episodes": len(returns),
                           "q_loss": self.last_info.get("q_loss", float("nan")),
                           "alpha": self.last_info.get("alpha", float(self.sac.alpha)),
                           "env_steps": self.counters.env_steps, "episodes": self.counters.episodes,
                           "violations": self.counters.violations,
                           "epoch_s": round(time.time() - seg_start, 2)}
                    self.rows.append(row)
                    write_csv(self.dir / "metrics.csv", self.rows)
                    self.save()
                    bar.set_postfix(violations=self.counters.violations, ret=f"{row['eval_return']:.3g}")
                    seg_start, returns = time.time(), []
        finally:
            env.close()
            bar.close()
        prior = sum(r.get("epoch_s", 0.0) for r in self.rows[: self._rows_at_start])
        last = self.rows[-1] if self.rows else {}
        evals = [r["eval_return"] for r in self.rows]
        return {"task": self.sys.name, "algorithm": "sac", "seed": cfg.seed,
                "env_steps": self.counters.env_steps, "episodes": self.counters.episodes,
                "violations": self.counters.violations,
                "final_eval_return": last.get("eval_return", float("nan")),
                "mean_return": float(np.mean(evals)) if evals else float("nan"),
                "penalty": cfg.penalty, "evaluations": len(self.rows),
                "wall_clock_s": round(time.time() - started + prior, 1)}


def train_sac_penalty(system: str | System | None, config: SACPenaltyConfig | None = None,
                      out: str | Path = "runs/sac", resume: bool = False, progress: bool = True) -> dict:
    """Run the SAC-with-penalty baseline on a built-in task name or a :class:`System`, writing the
    run folder ``out``; ``resume=True`` continues the run in ``out`` with its own config."""
    import yaml

    from crabs.plots import figure2
    from crabs.system import builtin_system

    if resume and not (Path(out) / "config.yaml").exists():
        raise FileNotFoundError(f"{str(out)!r} holds no run to resume (no config.yaml)")
    out = prepare_run_dir(out)
    cfg_path = out / "config.yaml"
    if resume:
        data = yaml.safe_load(cfg_path.read_text())
        if not isinstance(data, dict) or data.get("algorithm") != "sac":
            raise ValueError(f"{str(out)!r} does not hold a SAC-baseline run")
        cfg = SACPenaltyConfig.from_dict({k: v for k, v in data.items() if k != "algorithm"})
        system = cfg.task if system is None else system
        name = get_task(system).name if isinstance(system, str) else system.name
        if name != cfg.task:
            raise ValueError(f"{str(out)!r} holds a run of task {cfg.task!r}, not {name!r}")
        if (out / "summary.json").exists():
            done = json.loads((out / "summary.json").read_text())
            if done.get("env_steps", 0) >= cfg.steps:
                return done
    else:
        if system is None:
            raise ValueError("a task or System is required for a new run")
        if (out / "ledger.jsonl").exists() or (out / "checkpoints").exists():
            raise ValueError(f"{str(out)!r} already holds a run: pass resume or choose another folder")
        name = get_task(system).name if isinstance(system, str) else system.name
        cfg = config if config is not None else SACPenaltyConfig()
        if cfg.task != name:
            cfg = cfg.replace(task=name)
        cfg_path.write_text(yaml.safe_dump({"algorithm": "sac", **cfg.to_dict()}, sort_keys=False))
    if isinstance(system, str):
        system = builtin_system(system, cfg.sac.hidden, cfg.sac.act)
    learner = SACPenalty(system, cfg, out, progress)
    if resume:
        learner.resume()
    result = learner.run()
    write_json(out / "summary.json", result)
    figure2([("SAC (penalty)", out)], out / "figure2.png",
            title=f"{system.name}: SAC, penalty {cfg.penalty:g}")
    return result
