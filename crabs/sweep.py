"""``crabs sweep``: tasks x algorithms x seeds (x a grid of config values) as Ray Tune trials.

Each trial is one run folder ``SWEEP/<task>/<algorithm>/seed<k>`` (with a ``--grid``:
``SWEEP/<task>/<algorithm>/<key=value,...>/seed<k>``) in exactly the layout of ``crabs train`` /
``crabs baseline``: the trial calls the same library functions, in-process, inside a Ray Tune
function trainable, and reports the run's summary.

Resume is decided per trial from its folder, not from Tune's experiment state: a folder with a
finished run (summary.json, and the runner's ``finished`` agrees) is reported without a step; a
folder with a config.yaml and no finished run is resumed (``resume=True``: its checkpoints, its
counters recounted from its ledger); anything else starts fresh. So rerunning the same command
after a crash, a kill or Ctrl-C continues the sweep, whatever became of Tune's own bookkeeping
(``SWEEP/.tune/``, one experiment per invocation: trial logs and error files).

At the end ``SWEEP/sweep.json`` holds one row per trial (see :func:`trial_row`).

Ray is optional (``pip install 'crabs[sweep]'``); this module imports without it, and
:func:`run_sweep` says what to install.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from crabs.baselines import BASELINES
from crabs.baselines.config import budget_steps
from crabs.config import _deep_update, nest
from crabs.envs import get_task, ledger_totals, read_ledger
from crabs.runs import CONFIG, LEDGER, RunDir, prepare_run_dir

try:  # optional: crabs[sweep]
    from ray import tune as _tune
except ImportError:  # pragma: no cover - exercised by monkeypatching _tune in the tests
    _tune = None

CRABS_VARIANTS = {"crabs": {}, "crabs_handcrafted": {"barrier": {"init": "handcrafted", "learn": False}}}
"""CRABS and its ablation (Sec. 6: Algorithm 2 without Line 5, a handcrafted h), each an algorithm of
the sweep: CRABS's config with these keys set."""
ALGORITHMS = (*CRABS_VARIANTS, *BASELINES)
RAY_MISSING = "crabs sweep needs Ray: pip install 'crabs[sweep]'"
SWEEP_FILE = "sweep.json"
TUNE_DIR = ".tune"

STATUS_TRAINED = "trained"      # started in this session and finished
STATUS_RESUMED = "resumed"      # an interrupted run, continued and finished in this session
STATUS_SKIPPED = "skipped"      # finished before: reported, not a step taken
STATUS_FAILED = "failed"        # raised an exception (``error``); its steps so far are the ledger's
STATUS_INTERRUPTED = "interrupted"  # the sweep stopped (Ctrl-C) before the trial finished
OK_STATUSES = (STATUS_TRAINED, STATUS_RESUMED, STATUS_SKIPPED)


def require_ray() -> None:
    """Raise ImportError with the install line unless Ray Tune is importable."""
    if _tune is None:
        raise ImportError(RAY_MISSING)


# -- the grid ---------------------------------------------------------------------------------------
def _value_text(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return text.replace("/", "_").replace(" ", "")


@dataclass(frozen=True)
class Trial:
    """One cell of the sweep: a task, an algorithm, a seed and the grid's values for it."""

    task: str
    algorithm: str
    seed: int
    variant: tuple[tuple[str, Any], ...] = ()   # (dotted key, value) pairs of --grid

    @property
    def variant_name(self) -> str:
        return ",".join(f"{k}={_value_text(v)}" for k, v in self.variant)

    @property
    def name(self) -> str:
        """``task/algorithm[/key=value,...]/seed<k>``: the trial's name and its folder in the sweep."""
        variant = [self.variant_name] if self.variant else []
        return "/".join([self.task, self.algorithm, *variant, f"seed{self.seed}"])

    def folder(self, root: str | os.PathLike) -> Path:
        return Path(root, *self.name.split("/"))


def _scoped(item: str, flag: str) -> tuple[str | None, str]:
    """``[ALGORITHM:]KEY=VALUE`` -> (algorithm or None, ``KEY=VALUE``)."""
    key = item.partition("=")[0]
    if ":" not in key:
        return None, item
    scope, _, rest = item.partition(":")
    scope = scope.strip()
    if scope not in ALGORITHMS:
        raise ValueError(f"{flag} {item!r}: {scope!r} is not an algorithm ({', '.join(ALGORITHMS)})")
    return scope, rest


def _check_keys(overrides: dict, flag: str) -> None:
    for key, why in (("seed", "the seeds are given by --seeds"), ("task", "the tasks are given by --tasks"),
                     ("algorithm", "the algorithms are given by --algorithms")):
        if key in overrides:
            raise ValueError(f"{flag} {key}: {why}")


def parse_sets(items: Sequence[str]) -> dict[str | None, dict]:
    """``--set [ALGORITHM:]KEY=VALUE`` items as nested overrides per scope: None for every trial, an
    algorithm's name for its trials only (e.g. ``crabs:epochs=4``, ``sac:total_steps=300``)."""
    from crabs.config import parse_overrides

    raw: dict[str | None, list[str]] = {}
    for item in items:
        scope, rest = _scoped(item, "--set")
        raw.setdefault(scope, []).append(rest)
    out = {scope: parse_overrides(rest) for scope, rest in raw.items()}
    for o in out.values():
        _check_keys(o, "--set")
    return out


def parse_grid(items: Sequence[str]) -> list[tuple[str | None, str, list]]:
    """``--grid [ALGORITHM:]KEY=[V1, V2, ...]`` items (a YAML list) as (scope, dotted key, values)."""
    out = []
    for item in items:
        scope, rest = _scoped(item, "--grid")
        key, eq, text = rest.partition("=")
        try:
            values = yaml.safe_load(text) if eq else None
        except yaml.YAMLError:
            values = None
        if not key.strip() or not isinstance(values, list) or not values:
            raise ValueError(f"--grid {item!r}: expected KEY=[V1, V2, ...] (a YAML list), e.g. "
                             "sac.tau=[0.005,0.01]")
        nest(key, None)
        _check_keys({key.strip().split(".")[0]: None}, "--grid")
        out.append((scope, key.strip(), values))
    return out


def _unique(xs: Iterable) -> list:
    return list(dict.fromkeys(xs))


def expand(tasks: Sequence[str], algorithms: Sequence[str], seeds: Sequence[int],
           grid: Sequence[tuple[str | None, str, list]] = ()) -> list[Trial]:
    """The sweep's trials, task by task, algorithm by algorithm, grid value by grid value, seed by
    seed (duplicates dropped); a grid entry scoped to an algorithm varies that algorithm's trials
    only."""
    tasks = _unique(get_task(t).name for t in tasks)
    algorithms = _unique(algorithms)
    for a in algorithms:
        if a not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {a!r}: choose from {', '.join(ALGORITHMS)}")
    seeds = _unique(int(s) for s in seeds)
    if not (tasks and algorithms and seeds):
        raise ValueError("a sweep needs at least one task, one algorithm and one seed")
    trials = []
    for task in tasks:
        for algo in algorithms:
            mine = [(k, vs) for scope, k, vs in grid if scope in (None, algo)]
            for values in itertools.product(*[vs for _, vs in mine]):
                variant = tuple((k, v) for (k, _), v in zip(mine, values))
                trials.extend(Trial(task, algo, s, variant) for s in seeds)
    return trials


def trial_config(trial: Trial, sets: dict[str | None, dict] | None = None, epochs: int | None = None,
                 steps: int | None = None):
    """The trial's config: the task's defaults for its algorithm, overlaid with the unscoped
    ``--set`` overrides, then its algorithm's, then its grid values, its seed and ``epochs`` (CRABS)
    or ``steps`` (a baseline's online steps)."""
    from crabs.baselines import load_baseline_config
    from crabs.config import load_config

    sets = sets or {}
    overrides: dict = copy.deepcopy(CRABS_VARIANTS.get(trial.algorithm, {}))
    _deep_update(overrides, copy.deepcopy(sets.get(None, {})))
    _deep_update(overrides, copy.deepcopy(sets.get(trial.algorithm, {})))
    for key, value in trial.variant:
        _deep_update(overrides, nest(key, copy.deepcopy(value)))
    try:
        if trial.algorithm in CRABS_VARIANTS:
            cfg = load_config(None, task=trial.task, overrides=overrides)
            return cfg.replace(seed=trial.seed, **({"epochs": epochs} if epochs is not None else {}))
        return load_baseline_config(trial.algorithm, None, trial.task, overrides, seed=trial.seed,
                                    total_steps=steps)
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"trial {trial.name}: {msg} (scope a key to one algorithm with "
                         f"--set {trial.algorithm}:KEY=VALUE)") from None


# -- one trial ---------------------------------------------------------------------------------------
def runner_class(algorithm: str):
    """The :class:`crabs.runs.Runner` subclass of ``algorithm``."""
    if algorithm in CRABS_VARIANTS:
        from crabs.loop import CRABS

        return CRABS
    from crabs.baselines import LEARNERS

    return LEARNERS[algorithm]


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in _unique([*a, *b]):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [prefix.rstrip(".")]


def _extension(algorithm: str, stored, cfg) -> dict:
    """What a resumed run takes from the sweep's config: more CRABS epochs (a finished run extends)."""
    if algorithm in CRABS_VARIANTS and cfg.epochs > stored.epochs:
        return {"epochs": cfg.epochs}
    return {}


def trial_state(folder: str | os.PathLike, algorithm: str, cfg=None) -> str:
    """What a trial's folder holds: "new" (no run), "interrupted" (a run, not finished: resume it)
    or "finished" (nothing to do). With the sweep's ``cfg``, a CRABS run that finished fewer epochs
    than ``cfg.epochs`` is "interrupted" (it extends)."""
    run = RunDir(folder)
    if not (run.path / CONFIG).exists():
        return "new"
    cls = runner_class(algorithm)
    stored = cls.read_config(run)
    if cfg is not None:
        stored = stored.replace(**_extension(algorithm, stored, cfg))
    done = run.read_summary()
    return "finished" if done is not None and cls.finished(done, stored) is not None else "interrupted"


def run_trial(spec: dict) -> tuple[str, dict]:
    """Run (or resume, or just report) one trial in this process: ``spec`` holds its ``algorithm``,
    ``out`` (the run folder) and ``config`` (a dict). Returns (status, summary). A folder holding a
    run with other settings than ``config`` (other than more CRABS epochs) is refused."""
    algorithm, folder = spec["algorithm"], Path(spec["out"])
    cls = runner_class(algorithm)
    cfg = cls.config_cls.from_dict(spec["config"])
    train = _train_function(algorithm)
    state = trial_state(folder, algorithm, cfg)
    if state == "new":
        return STATUS_TRAINED, train(cfg.task, cfg, folder, progress=False)
    stored = cls.read_config(RunDir(folder))
    diff = [k for k in _differences(stored.to_dict(), cfg.to_dict())
            if not (algorithm in CRABS_VARIANTS and k == "epochs")]
    if diff:
        raise ValueError(f"{str(folder)!r} holds a run with other settings ({', '.join(diff)}): rerun the "
                         "sweep with that run's settings, or choose another --out")
    if state == "finished":
        return STATUS_SKIPPED, RunDir(folder).read_summary()
    if algorithm in CRABS_VARIANTS:
        return STATUS_RESUMED, train(None, None, folder, resume=True, progress=False,
                                     epochs=_extension(algorithm, stored, cfg).get("epochs"))
    return STATUS_RESUMED, train(None, None, folder, resume=True, progress=False)


def _train_function(algorithm: str):
    if algorithm in CRABS_VARIANTS:
        from crabs.loop import train

        return train
    return BASELINES[algorithm]


def sweep_trainable(config: dict) -> None:
    """The Ray Tune function trainable: one trial (``config["trial"]``, see :func:`run_trial`), its
    summary reported once at the end."""
    spec = config["trial"]
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    status, summary = run_trial(spec)
    _tune.report({"status": status, "env_steps": summary.get("env_steps"),
                  "violations": summary.get("violations"), "summary": summary})


# -- rows -----------------------------------------------------------------------------------------------
def trial_row(trial: Trial, root: str | os.PathLike, status: str, summary: dict | None = None,
              error: str | None = None, tune_dir: str | None = None) -> dict:
    """One row of sweep.json: the trial, its status (trained, resumed, skipped, failed,
    interrupted), the error of a failed trial, the summary's counts and returns and the run folder
    (relative to the sweep folder). A trial without a summary (failed, interrupted) still reports
    the steps and violations its ledger records: they were taken."""
    s = dict(summary or {})
    if summary is None:
        ledger = trial.folder(root) / LEDGER
        if ledger.exists():
            s.update(ledger_totals(read_ledger(ledger)).to_dict())
    row = {"task": trial.task, "algorithm": trial.algorithm, "seed": trial.seed}
    if trial.variant:
        row["variant"] = dict(trial.variant)
    row.update({"status": status, "error": error, "violations": s.get("violations"),
                "env_steps": s.get("env_steps"), "final_eval_return": s.get("final_eval_return"),
                "last_epoch_eval_return": s.get("last_epoch_eval_return"),
                "wall_clock_s": s.get("wall_clock_s"), "run": trial.name})
    if "offline_violations" in s:
        row["offline_violations"] = s["offline_violations"]
    if tune_dir:
        row["tune_dir"] = tune_dir
    return row


def write_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """sweep.json (a list of rows), atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, path)


def sweep_failed(rows: list[dict]) -> bool:
    """Whether a sweep should exit non-zero: a trial did not finish, or a CRABS trial violated (a
    baseline's violations are its result, as ``crabs baseline`` exits 0 whatever its count)."""
    return any(r["status"] not in OK_STATUSES or (r["algorithm"] in CRABS_VARIANTS and r.get("violations"))
               for r in rows)


def format_table(rows: list[dict]) -> str:
    def num(v, fmt="{:.4g}"):
        return "-" if v is None else fmt.format(v)

    width = max([len("trial")] + [len(r["run"]) for r in rows])
    lines = [f"{'trial':{width}s} {'status':11s} {'env steps':>10s} {'violations':>10s} "
             f"{'final return':>12s} {'wall s':>8s}"]
    for r in rows:
        lines.append(f"{r['run']:{width}s} {r['status']:11s} {num(r['env_steps'], '{:d}'):>10s} "
                     f"{num(r['violations'], '{:d}'):>10s} {num(r['final_eval_return']):>12s} "
                     f"{num(r['wall_clock_s'], '{:.0f}'):>8s}")
        if r.get("error"):
            lines.append(f"{'':{width}s}   error: {r['error']}")
    return "\n".join(lines)


def error_text(err: BaseException | None) -> str | None:
    """A trial's exception as one short message (the trainable's own exception, not Ray's wrapper)."""
    if err is None:
        return None
    cause = getattr(err, "cause", None)
    e = cause if isinstance(cause, BaseException) else err
    text = str(e).strip()
    if e is err and "\n" in text:   # Ray's own: a traceback's last line, else the first line
        text = text.splitlines()[-1 if "Traceback" in text else 0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- progress -------------------------------------------------------------------------------------------
class _LedgerTail:
    """The running totals of a ledger that grows, read incrementally (whole lines only)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.env_steps = path, 0, 0

    def update(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return self.env_steps
        end = chunk.rfind(b"\n") + 1
        if end:
            self.offset += end
            records = []
            for line in chunk[:end].decode("utf-8", "replace").splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            self.env_steps = max(self.env_steps, ledger_totals(records).env_steps)
        return self.env_steps


class SweepProgress(_tune.Callback if _tune is not None else object):
    """One progress bar for the whole sweep (Ray Tune callback, on the driver): trials done out of
    all, running and failed, the env steps of every trial folder's ledger so far, elapsed time."""

    def __init__(self, folders: Sequence[Path], quiet: bool = False, every_s: float = 2.0):
        self.folders, self.quiet, self.every_s = list(folders), quiet, every_s
        self.running: set[str] = set()
        self.failed = 0
        self._bar = None
        self._tails = [_LedgerTail(f / LEDGER) for f in self.folders]
        self._last = 0.0

    def __getstate__(self):   # Tune may pickle its callbacks with the experiment: no bar, no files
        return {"folders": self.folders, "quiet": True, "every_s": self.every_s, "running": set(),
                "failed": 0, "_bar": None, "_tails": [], "_last": 0.0}

    def _show(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.time()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self.folders), desc="sweep", unit="trial")
        steps = sum(t.update() for t in self._tails)
        self._bar.set_postfix_str(f"running {len(self.running)}, failed {self.failed}, env steps {steps}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(str(trial))
        self._show(force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(str(trial))
        self._show(force=True)
        if self._bar is not None:
            self._bar.update(1)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(str(trial))
        self.failed += 1
        self._show(force=True)
        if self._bar is not None:
            self._bar.update(1)

    def on_step_end(self, iteration, trials, **info):
        self._show()

    def close(self) -> None:
        if self._bar is not None:
            self._show(force=True)
            self._bar.close()
            self._bar = None


# -- the sweep -----------------------------------------------------------------------------------------
def _lock(root: Path):
    """Hold ``root/.sweep.lock`` (released when the file closes, or the process dies): two sweeps in
    one folder would write the same run folders."""
    fh = open(root / ".sweep.lock", "w")  # noqa: SIM115 (closed by run_sweep)
    try:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:   # (no fcntl: not locked)
        pass
    except OSError:
        fh.close()
        raise OSError(f"another crabs sweep is running in {str(root)!r}") from None
    return fh


def _trial_name(t) -> str:
    return t.config["trial"]["name"]


def _trial_dirname(t) -> str:
    return t.config["trial"]["name"].replace("/", "_")


def trial_specs(trials: Sequence[Trial], root: Path, sets: dict[str | None, dict] | None = None,
                epochs: int | None = None, steps: int | None = None, budget: str = "crabs",
                threads: int = 1) -> list[dict]:
    """What each trial runs (see :func:`run_trial`): its name, algorithm, folder under ``root``,
    torch threads and config, the baselines' online steps being ``steps`` on every task or else
    ``budget``'s for the trial's task. Every config is built here, so a bad one is refused before
    anything runs."""
    if steps is not None and budget != "crabs":
        raise ValueError(f"give the baselines' steps or a budget, not both (--steps {steps}, "
                         f"--budget {budget})")
    specs = []
    for t in trials:
        # "crabs" leaves total_steps unset (the task's BUDGET), as in a sweep without --budget; a
        # CRABS trial's config ignores the steps
        n = steps if steps is not None else budget_steps(budget, t.task) if budget != "crabs" else None
        specs.append({"name": t.name, "algorithm": t.algorithm, "out": str(t.folder(root)),
                      "threads": threads, "config": trial_config(t, sets, epochs, n).to_dict()})
    return specs


def run_sweep(out: str | os.PathLike, tasks: Sequence[str], algorithms: Sequence[str],
              seeds: Sequence[int] = (0,), sets: Sequence[str] = (), grid: Sequence[str] = (),
              epochs: int | None = None, steps: int | None = None, budget: str = "crabs",
              cpus_per_trial: float = 1, num_cpus: int | None = None, address: str | None = None,
              retries: int = 0, quiet: bool = False) -> list[dict]:
    """Run the sweep into ``out`` (see the module docstring) and return sweep.json's rows.

    ``sets``/``grid`` are the ``--set``/``--grid`` items; ``epochs`` (CRABS) and ``steps`` (the
    baselines' online steps, the same on every task) override the configs; ``budget`` sets the
    baselines' steps per task instead (:func:`crabs.baselines.config.budget_steps`: "crabs", the
    default, about a CRABS run's env steps; "paper", 10^6; "3x", three times CRABS's). Ray: an
    instance this process already started is used as it is; else ``address`` attaches to a
    cluster; else a local instance with ``num_cpus`` CPUs (default: all) is started and shut down
    at the end. A trial takes ``cpus_per_trial`` CPUs (and as many torch threads); a crashed trial
    is retried ``retries`` times (resuming from its folder) before it counts as failed."""
    require_ray()
    if retries < 0:
        raise ValueError(f"--retries must be >= 0, got {retries}")
    if address and num_cpus:
        raise ValueError("--num-cpus sizes a local Ray instance: not with --address")
    trials = expand(tasks, algorithms, seeds, parse_grid(grid))
    root = Path(out).resolve()
    specs = trial_specs(trials, root, parse_sets(sets), epochs, steps, budget, max(1, int(cpus_per_trial)))
    prepare_run_dir(root)   # (after every config is known to be good)
    if not quiet:
        before = {"finished": 0, "interrupted": 0}
        for t in trials:
            f = t.folder(root)
            if (f / CONFIG).exists():
                before["finished" if (f / "summary.json").exists() else "interrupted"] += 1
        print(f"sweep {root}: {len(trials)} trials ({before['finished']} with a summary, "
              f"{before['interrupted']} to resume)", flush=True)

    lock = _lock(root)
    started = time.time()
    try:
        results = _fit(specs, root, [t.folder(root) for t in trials], cpus_per_trial, num_cpus, address,
                       retries, quiet)
        rows = _rows(trials, root, results, started)
        write_rows(root / SWEEP_FILE, rows)
    finally:
        lock.close()
    return rows


def _fit(specs: list[dict], root: Path, folders: list[Path], cpus_per_trial: float, num_cpus: int | None,
         address: str | None, retries: int, quiet: bool):
    """The Ray Tune experiment of the trials ``specs`` (Ray started, and stopped, unless it was up)."""
    import ray

    tune_logger = logging.getLogger("ray.tune")
    saved_level, saved_env = tune_logger.level, os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"     # the old reporter, which verbose=0 silences
    tune_logger.setLevel(logging.CRITICAL)     # trial errors are reported by the rows, once
    started_ray = False
    progress = SweepProgress(folders, quiet=quiet)
    try:
        if not ray.is_initialized():
            level = logging.ERROR if quiet else logging.WARNING
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=level)
            else:
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                         log_to_driver=False, logging_level=level)
            started_ray = True
        tuner = _tune.Tuner(
            _tune.with_resources(sweep_trainable, {"cpu": cpus_per_trial}),
            param_space={"trial": _tune.grid_search(specs)},
            tune_config=_tune.TuneConfig(trial_name_creator=_trial_name,
                                         trial_dirname_creator=_trial_dirname),
            run_config=_tune.RunConfig(
                name=time.strftime("sweep-%Y%m%d-%H%M%S"), storage_path=str(root / TUNE_DIR), verbose=0,
                callbacks=[progress], failure_config=_tune.FailureConfig(max_failures=retries),
                log_to_file=True, sync_config=_tune.SyncConfig(sync_artifacts=True)))
        return tuner.fit()
    finally:
        progress.close()
        tune_logger.setLevel(saved_level)
        if saved_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved_env
        if started_ray:
            ray.shutdown()


def _rows(trials: list[Trial], root: Path, results, started: float) -> list[dict]:
    """sweep.json's rows from Ray Tune's results (and, for a trial without a summary, its ledger)."""
    by_name = {}
    for r in results:
        cfg = r.config or {}
        if "trial" in cfg:
            by_name[cfg["trial"]["name"]] = r
    rows = []
    for t in trials:
        r = by_name.get(t.name)
        tune_dir = str(r.path) if r is not None and r.path else None
        metrics = (r.metrics if r is not None else None) or {}
        if r is not None and r.error is not None:
            rows.append(trial_row(t, root, STATUS_FAILED, error=error_text(r.error), tune_dir=tune_dir))
        elif metrics.get("status") in OK_STATUSES and isinstance(metrics.get("summary"), dict):
            rows.append(trial_row(t, root, metrics["status"], metrics["summary"], tune_dir=tune_dir))
        else:   # no report: the sweep stopped first (Ctrl-C), though the run may have finished
            rows.append(_unreported_row(t, root, started, tune_dir))
    return rows


def _unreported_row(trial: Trial, root: Path, started: float, tune_dir: str | None) -> dict:
    folder = trial.folder(root)
    try:
        finished = trial_state(folder, trial.algorithm) == "finished"
    except (OSError, ValueError, TypeError, KeyError):
        finished = False
    if not finished:
        return trial_row(trial, root, STATUS_INTERRUPTED, tune_dir=tune_dir)
    summary = RunDir(folder).read_summary()
    fresh = (folder / "summary.json").stat().st_mtime >= started   # written by this sweep
    return trial_row(trial, root, STATUS_TRAINED if fresh else STATUS_SKIPPED, summary, tune_dir=tune_dir)
