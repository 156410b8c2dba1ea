"""The run harness every runner shares (CRABS, the baselines, ``crabs verify``, ``crabs rollout``).

Layout of a run folder::

    DIR/config.yaml       the full configuration (every hyperparameter)
    DIR/ledger.jsonl      append-only safety ledger: every violation, every episode (monitor.py)
    DIR/metrics.csv       one row per epoch / evaluation
    DIR/checkpoints/      last.pt (the whole training state) and policy.pt (the delivered policy);
                          weights only: torch.load(weights_only=True) loads them, nothing is unpickled
    DIR/summary.json      the result
    DIR/*.png             plots

:class:`RunDir` is the folder and :class:`Runner` what every algorithm's run inherits:
``Runner.train`` (a new or resumed run's folder and config, resolved by the same rules for every
algorithm), the monitored environment, versioned atomic checkpoints with the random generators,
resume with the counters recounted from the ledger, metrics, wall-clock over sessions, the
progress bar and the summary. An algorithm adds its own state (``extra_state``), its delivered
policy and its loop (``run``).
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
import yaml

from crabs.alloc import keep_freed_memory
from crabs.envs import MonitorCounters, SafetyMonitor, get_task, ledger_totals, read_ledger

LEDGER = "ledger.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.csv"


# -- files --------------------------------------------------------------------------------------
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


def checkpoint_rows(d: dict) -> list[dict] | None:
    """A checkpoint's metrics rows ("log" in CRABS checkpoints of version 2), None if it has none."""
    return d.get("rows", d.get("log"))


class RunDir:
    """A run folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.ledger = self.path / LEDGER
        self.checkpoints = self.path / "checkpoints"

    @classmethod
    def claim(cls, out: str | os.PathLike, resume: bool) -> RunDir:
        """The run folder ``out``, ready to write: to resume, it must hold a run (its config.yaml);
        for a new run, it must not (no ledger, no checkpoints), so that no run is ever overwritten."""
        if resume and not (Path(out) / CONFIG).exists():
            raise FileNotFoundError(f"{str(out)!r} holds no run to resume (no config.yaml)")
        path = prepare_run_dir(out)
        if not resume and ((path / LEDGER).exists() or (path / "checkpoints").exists()):
            raise ValueError(f"{str(out)!r} already holds a run: pass resume or choose another folder")
        return cls(path)

    def __str__(self) -> str:
        return str(self.path)

    def read_config(self) -> dict:
        """The run's own config.yaml as a dict (keys retired since it was written dropped)."""
        from crabs.config import drop_retired

        data = yaml.safe_load((self.path / CONFIG).read_text())
        return drop_retired(data) if isinstance(data, dict) else data

    def write_config(self, cfg) -> None:
        (self.path / CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def read_summary(self) -> dict | None:
        p = self.path / SUMMARY
        return json.loads(p.read_text()) if p.exists() else None

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)

    def write_metrics(self, rows: Sequence[dict]) -> None:
        write_csv(self.path / METRICS, rows)

    def monitor(self, system, counters: MonitorCounters, tag: str) -> SafetyMonitor:
        """The system's real environment behind the safety monitor, counting into ``counters`` and
        writing this folder's ledger."""
        return system.make_monitored_env(ledger=self.ledger, counters=counters, tag=tag)

    def save_checkpoint(self, blob: dict) -> Path:
        """checkpoints/last.pt, atomically (temp file + rename)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        path, tmp = self.checkpoints / "last.pt", self.checkpoints / "last.pt.tmp"
        torch.save(blob, tmp)
        tmp.replace(path)
        return path

    def load_checkpoint(self) -> dict | None:
        """checkpoints/last.pt (weights only), or None if the run has none yet."""
        path = self.checkpoints / "last.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def save_policy(self, policy, state: dict, meta: dict) -> None:
        """checkpoints/policy.pt: a policy network's shape, the weights ``state`` and what it is."""
        from crabs.initial import save_policy

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_policy(policy, self.checkpoints / "policy.pt", state=state, **meta)


def _system_name(system) -> str:
    """A System's name, or a task name (a built-in task's in its own spelling)."""
    if not isinstance(system, str):
        return system.name
    try:
        return get_task(system).name
    except ValueError:   # a user System's name, as a resumed run's config gives it
        return system


class Runner:
    """What every algorithm's run inherits (Stable-Baselines3's split: the algorithm's maths lives in
    its own modules, the run loop in the subclass's ``run``, the rest here).

    Subclasses set ``algorithm``, ``label``, ``config_cls`` and ``version`` (of their checkpoint
    format; ``accepts`` lists the older versions they still read) and provide ``run`` (the whole
    loop, returning the summary), ``default_config``, ``extra_state`` / ``load_extra_state``
    (their networks and state), ``delivered_policy`` (what policy.pt holds) and ``generators``
    (their torch generators, checkpointed with NumPy's and torch's global one)."""

    algorithm = ""
    label = ""
    config_cls: type = object
    version = 1
    accepts: tuple[int, ...] = ()

    def __init__(self, system, cfg, run_dir: str | os.PathLike | RunDir, progress: bool = True):
        self.sys, self.cfg, self.progress = system, cfg, progress
        self.folder = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.dir = self.folder.path
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.counters = MonitorCounters()
        self.rows: list[dict] = []          # metrics.csv, one per epoch / evaluation
        self._rows_at_start = 0             # rows written by earlier sessions (resume)

    # -- a whole run ------------------------------------------------------------------------------
    @classmethod
    def train(cls, system, config=None, out: str | os.PathLike = "runs/run", resume: bool = False,
              progress: bool = True, changes: dict | None = None) -> dict:
        """Run on a built-in task name or a System, writing the run folder ``out`` (config, ledger,
        metrics, checkpoints, summary.json, plots); see :meth:`open` for new and resumed runs."""
        folder, cfg, system, done = cls.open(out, resume, system, config, changes, progress)
        if done is not None:
            return done
        keep_freed_memory()                 # no number changes; the hot loops fault fewer pages
        runner = cls(system, cfg, folder, progress)
        summary = runner.run()
        folder.write_summary(summary)
        runner.make_plots()
        return summary

    @classmethod
    def open(cls, out, resume: bool, system, config, changes: dict | None = None, progress: bool = True):
        """Resolve a run's folder, config and system, the same way for every algorithm.

        A new run (``resume=False``) needs ``system`` (a built-in task name or a System) and takes
        ``config`` or ``default_config(system)``; the config names the system's task and is written
        to the folder. A resumed run reads the folder's own config (it must be of this algorithm and
        the same task), applies ``changes`` (e.g. more epochs, written back); if the run has a
        summary and ``finished(summary, cfg)`` returns a message, it is done: the message is shown
        and nothing more happens. Returns (RunDir, config, System or None when done, the finished
        summary or None)."""
        from crabs.system import builtin_system

        folder = RunDir.claim(out, resume)
        if resume:
            cfg = cls.read_config(folder)
            system = cfg.task if system is None else system
            name = _system_name(system)
            if name != cfg.task:
                raise ValueError(f"{str(folder)!r} holds a run of task {cfg.task!r}, not {name!r}")
            if changes:
                cfg = cfg.replace(**changes)
                folder.write_config(cfg)
            done = folder.read_summary()
            message = cls.finished(done, cfg) if done is not None else None
            if message is not None:
                if progress:
                    from tqdm.auto import tqdm

                    tqdm.write(f"{str(folder)!r} {message}")
                return folder, cfg, None, done
        else:
            if system is None:
                raise ValueError("a task or System is required for a new run")
            name = _system_name(system)
            cfg = config if config is not None else cls.default_config(system)
            if getattr(cfg, "algorithm", "crabs") != cls.algorithm:
                raise ValueError(f"config.algorithm is {cfg.algorithm!r}, not {cls.algorithm!r}")
            if cfg.task != name:
                cfg = cfg.replace(task=name)
            folder.write_config(cfg)
        if isinstance(system, str):
            system = builtin_system(system, cfg.sac.hidden, cfg.sac.act)
        return folder, cfg, system, None

    @classmethod
    def default_config(cls, system):
        """The config of a new run given none (``system``: a task name or a System)."""
        raise NotImplementedError

    @classmethod
    def finished(cls, done: dict, cfg) -> str | None:
        """Whether a resumed run with this summary is done: a message to show, or None to go on."""
        return "finished: nothing to do"

    def run(self) -> dict:
        """The whole loop (resuming if the folder holds a checkpoint); returns the summary."""
        raise NotImplementedError

    def make_plots(self) -> None:
        self.plot_progress()

    @classmethod
    def check_checkpoint(cls, d: dict, system_name: str) -> None:
        """Refuse a checkpoint of another algorithm, of a version this release does not read, or of
        another system."""
        version, algorithm = d.get("version"), d.get("algorithm", "crabs")
        if algorithm != cls.algorithm or (version != cls.version and version not in cls.accepts):
            raise ValueError(f"checkpoint is not from a {cls.algorithm} run of a version this release "
                             f"reads (algorithm {algorithm!r}, version {version})")
        if d["system"] != system_name:
            raise ValueError(f"checkpoint is from task {d['system']!r}, not {system_name!r}")

    @classmethod
    def read_config(cls, folder: RunDir, why: str = ""):
        """A run folder's own config, refused unless it is of this algorithm (``why`` ends the
        message)."""
        data = folder.read_config()
        found = data.get("algorithm", "crabs") if isinstance(data, dict) else "?"
        if found != cls.algorithm:
            raise ValueError(f"{str(folder)!r} holds a {found} run, not {cls.algorithm}{why}")
        return cls.config_cls.from_dict(data)

    @classmethod
    def read_run(cls, out: str | os.PathLike, why: str = "") -> tuple:
        """A finished or interrupted run of this algorithm, read without building a runner: its
        config and its last checkpoint (weights only), checked against each other (``why`` ends the
        message refusing another algorithm's run)."""
        folder = RunDir(out)
        if not (folder.path / CONFIG).exists() or not (folder.checkpoints / "last.pt").exists():
            raise FileNotFoundError(f"{str(folder)!r} holds no {cls.label} checkpoint (config.yaml, "
                                    "checkpoints/last.pt)")
        cfg = cls.read_config(folder, why)
        blob = folder.load_checkpoint()
        cls.check_checkpoint(blob, cfg.task)
        return cfg, blob

    # -- the subclass's part ----------------------------------------------------------------------
    def generators(self) -> dict[str, torch.Generator]:
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, d: dict) -> None:
        pass

    def delivered_policy(self) -> tuple:
        """(policy network, its weights, meta) for checkpoints/policy.pt."""
        raise NotImplementedError

    # -- real steps -------------------------------------------------------------------------------
    def env(self, tag: str) -> SafetyMonitor:
        return self.folder.monitor(self.sys, self.counters, tag)

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        rng = {**rng_state(self.rng), "torch": torch.get_rng_state(),
               **{k: g.get_state() for k, g in self.generators().items()}}
        return {"version": self.version, "algorithm": self.algorithm, "system": self.sys.name,
                "config": self.cfg.to_dict(), "counters": self.counters.to_dict(), "rows": self.rows,
                "rng": rng, **self.extra_state()}

    def load_state_dict(self, d: dict) -> None:
        self.check_checkpoint(d, self.sys.name)
        self.counters = MonitorCounters(**d["counters"])
        self.rows = list(checkpoint_rows(d))
        self._rows_at_start = len(self.rows)
        self.load_extra_state(d)
        r = d["rng"]   # last: loading the state may draw from the generators
        set_rng_state(self.rng, r)
        torch.set_rng_state(r["torch"])
        for k, g in self.generators().items():
            if k in r:   # (a generator newer than the checkpoint keeps its seed)
                g.set_state(r[k])

    def save(self) -> Path:
        """checkpoints/last.pt (atomically) and policy.pt."""
        path = self.folder.save_checkpoint(self.state_dict())
        self.save_policy()
        return path

    def save_policy(self, **which) -> None:
        """checkpoints/policy.pt: ``delivered_policy(**which)``."""
        self.folder.save_policy(*self.delivered_policy(**which))

    def resume(self) -> bool:
        """Continue from checkpoints/last.pt if there is one (returns whether there was); either way
        the counters continue from the ledger, so real steps taken after the checkpoint (or before
        the first one) still count."""
        blob = self.folder.load_checkpoint()
        if blob is not None:
            self.load_state_dict(blob)
        recount(self.counters, self.folder.ledger)
        return blob is not None

    # -- the run ----------------------------------------------------------------------------------
    def write_metrics(self) -> None:
        self.folder.write_metrics(self.rows)

    def prior_wall_clock(self) -> float:
        """Wall-clock of the run's earlier sessions (before a resume), from the metrics rows."""
        return float(sum(r.get("epoch_s", 0.0) for r in self.rows[: self._rows_at_start]))

    def progress_bar(self, total: int, initial: int, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=f"{self.algorithm} {self.sys.name}", unit=unit,
                    disable=not self.progress)

    def summary(self, started: float, **fields) -> dict:
        """The run's result: who ran where, the monitor's counts, ``fields``, and the wall-clock of
        every session."""
        c = self.counters
        return {"task": self.sys.name, "algorithm": self.algorithm, "seed": self.cfg.seed,
                "env_steps": c.env_steps, "episodes": c.episodes, "violations": c.violations, **fields,
                "wall_clock_s": round(time.time() - started + self.prior_wall_clock(), 1)}

    def plot_progress(self, title: str | None = None) -> None:
        """figure2.png: return and cumulative violations against real steps (the paper's Figure 2)."""
        from crabs.plots import figure2

        figure2([(self.label, self.dir)], self.dir / "figure2.png",
                title=title or f"{self.sys.name}: {self.label}")
