"""The ``crabs`` command line. Every real environment step goes through the safety monitor."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from crabs.envs import TASKS, get_task, make_env


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _task(text: str) -> str:
    try:
        return get_task(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_tasks(args) -> int:
    for t in TASKS.values():
        print(f"{t.name:8s} {t.env_id:18s} {t.description}")
    return 0


def cmd_rollout(args) -> int:
    from crabs.initial import initial_policy, load_policy
    from crabs.rollout import rollout
    from crabs.runs import LEDGER, SUMMARY, RunDir, write_json

    out = RunDir.claim(args.out, resume=False).path   # never into a run's folder: its counts stay its own
    torch.manual_seed(args.seed)
    if args.policy == "initial":
        policy = initial_policy(args.task)
    else:
        policy, _ = load_policy(args.policy)
    started = time.time()
    env = make_env(args.task, ledger=out / LEDGER, tag="rollout")
    try:
        eps = rollout(env, policy, args.episodes, seed=args.seed)
    finally:
        env.close()
    c = env.counters
    result = {"task": args.task, "algorithm": f"rollout:{args.policy}", "seed": args.seed,
              "env_steps": c.env_steps, "episodes": c.episodes, "violations": c.violations,
              "mean_return": float(np.mean([e.ret for e in eps])),
              "wall_clock_s": round(time.time() - started, 3)}
    write_json(out / SUMMARY, result)
    print(json.dumps(result, indent=2))
    return 0 if result["violations"] == 0 else 1


def _resume_only(args, *ignored: str) -> None:
    """A resumed run keeps its own config.yaml: refuse options that would silently not apply."""
    given = [f"--{k}" for k in ignored if getattr(args, k, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} cannot be used with --resume: the run continues with its "
                         "own config.yaml")


def _system(args):
    """The system named on the command line: a built-in ``--task`` or a user's ``--system``."""
    from crabs.system import load_system

    if args.task is not None and getattr(args, "system", None) is not None:
        raise ValueError("give --task or --system, not both")
    return load_system(args.system) if getattr(args, "system", None) else args.task


def cmd_train(args) -> int:
    from crabs.config import load_config, parse_overrides
    from crabs.loop import train

    system = _system(args)
    if args.resume:
        _resume_only(args, "config", "set", "seed", "out")
        result = train(system, None, args.resume, resume=True, progress=not args.quiet,
                       epochs=args.epochs)
    else:
        if system is None or args.out is None:
            raise ValueError("--task (or --system) and --out are required (or --resume DIR)")
        cfg = load_config(args.config, task=args.task, overrides=parse_overrides(args.set or []))
        overrides = {}
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if overrides:
            cfg = cfg.replace(**overrides)
        result = train(system, cfg, args.out, progress=not args.quiet)
    print(json.dumps(result, indent=2))
    return 0 if result["violations"] == 0 else 1


def cmd_baseline(args) -> int:
    from crabs.baselines import BASELINES, load_baseline_config
    from crabs.config import parse_overrides

    train = BASELINES[args.algorithm]
    if args.resume:
        _resume_only(args, "config", "set", "seed", "out", "steps")
        result = train(args.task, None, args.resume, resume=True, progress=not args.quiet)
    else:
        if args.task is None or args.out is None:
            raise ValueError("--task and --out are required (or --resume DIR)")
        cfg = load_baseline_config(args.algorithm, args.config, args.task, parse_overrides(args.set or []),
                                   seed=args.seed, total_steps=args.steps)
        result = train(args.task, cfg, args.out, progress=not args.quiet)
    print(json.dumps(result, indent=2))
    return 0


def cmd_sweep(args) -> int:
    from crabs import sweep

    try:
        sweep.require_ray()
    except ImportError as e:
        print(f"crabs: error: {e}", file=sys.stderr)
        return 2
    rows = sweep.run_sweep(args.out, args.tasks, args.algorithms, args.seeds, sets=args.set or [],
                           grid=args.grid or [], epochs=args.epochs, steps=args.steps, budget=args.budget,
                           cpus_per_trial=args.cpus_per_trial, num_cpus=args.num_cpus, address=args.address,
                           retries=args.retries, quiet=args.quiet)
    print(sweep.format_table(rows))
    print(f"rows: {Path(args.out) / sweep.SWEEP_FILE}")
    if any(r["status"] == sweep.STATUS_INTERRUPTED for r in rows):
        print("crabs: interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 1 if sweep.sweep_failed(rows) else 0


def cmd_compare(args) -> int:
    from crabs.config import algorithm_of
    from crabs.envs import ledger_totals, read_ledger
    from crabs.plots import eval_summary, figure2
    from crabs.runs import METRICS, RunDir

    runs, table = [], []
    for d in args.runs:
        folder = RunDir(d)
        d = folder.path
        if not (d / METRICS).exists() or not folder.ledger.exists():
            raise FileNotFoundError(f"{str(d)!r} is not a run folder (no metrics.csv and ledger.jsonl)")
        info = folder.read_summary() or {}
        if not info:  # an unfinished run: its config names it, the ledger counts it
            conf = folder.read_config() or {}
            led = read_ledger(folder.ledger)
            info = {"algorithm": algorithm_of(conf), "seed": conf.get("seed"),
                    "task": conf.get("task"), **ledger_totals(led).to_dict(),
                    "offline_violations": ledger_totals(led, tag="offline").violations,
                    "final_eval_return": None}
        runs.append((f"{info.get('algorithm')} s{info.get('seed')}", d))
        table.append({**info, **eval_summary(d, str(info.get("algorithm")))})
    # the paper's Figure 2: one column per task, one curve per algorithm (mean and one standard
    # deviation over its seeds); --each draws every run on its own
    out = figure2([(str(t.get("task")), f"{label} ({d.name})" if args.each else str(t.get("algorithm")), d)
                   for (label, d), t in zip(runs, table)], args.out)
    # the same quantities for every algorithm: the last evaluation of the policy being trained and
    # the best evaluation (for CRABS, of a certified triple: the pair it delivers)
    def fmt(x):
        return "-" if x is None else f"{x:.4g}"

    print(f"{'run':24s} {'task':8s} {'env steps':>10s} {'violations':>10s} {'of them offline':>16s} "
          f"{'last eval':>10s} {'best eval':>10s}")
    for (label, _), t in zip(runs, table):
        print(f"{label:24s} {str(t.get('task')):8s} {t.get('env_steps', 0):>10d} "
              f"{t.get('violations', 0):>10d} {t.get('offline_violations', 0):>16d} "
              f"{fmt(t['last_eval']):>10s} {fmt(t['best_eval']):>10s}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in table:
        groups.setdefault((str(t.get("task")), str(t.get("algorithm"))), []).append(t)
    if groups:
        print(f"\n{'task':8s} {'algorithm':17s} {'runs':>4s} {'online violations (mean, max)':>30s} "
              f"{'last eval (mean +- std)':>24s} {'best eval (mean +- std)':>24s}")
        for (task, algo), g in groups.items():
            v = [t.get("violations", 0) - t.get("offline_violations", 0) for t in g]
            cols = []
            for key in ("last_eval", "best_eval"):
                r = [t[key] for t in g if t.get(key) is not None]
                cols.append(f"{np.mean(r):.4g} +- {np.std(r):.2g}" if r else "-")
            print(f"{task:8s} {algo:17s} {len(g):>4d} {f'{np.mean(v):.1f}, {max(v)}':>30s} "
                  f"{cols[0]:>24s} {cols[1]:>24s}")
    print(f"figure: {out}")
    return 0


def cmd_verify(args) -> int:
    from crabs.system import load_system
    from crabs.verify import passes, summary_line, verify_run

    system = load_system(args.system) if args.system else None
    result = verify_run(args.run, system, which=args.which, states=args.states, horizon=args.horizon,
                        chains_mult=args.chains_mult, steps=args.steps, seed=args.seed)
    print(json.dumps(result, indent=2))   # stdout stays one JSON document; the verdict goes to stderr
    print(summary_line(result), file=sys.stderr)
    return 0 if passes(result) else 1


def cmd_render(args) -> int:
    from crabs.render import render_run
    from crabs.system import load_system

    system = load_system(args.system) if args.system else None
    result = render_run(args.run, args.out, system, which=args.which, frames=args.frames, fps=args.fps)
    print(json.dumps(result, indent=2))
    return 0 if result["violations"] == 0 else 1


def cmd_oracle(args) -> int:
    from crabs import oracle

    print(json.dumps(oracle.report(args.task), indent=2))
    return 0


def cmd_make_initial(args) -> int:
    from crabs.initial import main as make_initial

    argv = [x for t in args.task or [] for x in ("--task", t)] + (["--out", args.out] if args.out else [])
    return make_initial(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crabs", description="Safe RL with learned barrier "
                                "certificates (CRABS, Luo & Ma 2021).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("tasks", help="list the built-in tasks")
    s.set_defaults(func=cmd_tasks)

    s = sub.add_parser("rollout", help="run a policy through the safety monitor")
    s.add_argument("--task", type=_task, required=True)
    s.add_argument("--policy", default="initial", help="'initial' or a policy file")
    s.add_argument("--episodes", type=_positive_int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="run folder")
    s.set_defaults(func=cmd_rollout)

    s = sub.add_parser("train", help="train CRABS on a task (the main job)")
    s.add_argument("--task", type=_task)
    s.add_argument("--system", metavar="MODULE[:FUNCTION]",
                   help="a system of your own instead of --task: the module's make_system() (or FUNCTION) "
                        "returning a crabs.system.System, e.g. crabs.examples.lane_car; default Config()")
    s.add_argument("--config", help="YAML file overriding the task's default config")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key after "
                   "--config, value parsed as YAML (repeatable), e.g. --set sac.tau=0.01 --set epochs=12")
    s.add_argument("--seed", type=int)
    s.add_argument("--epochs", type=_positive_int, help="epochs in all (default: the config's)")
    s.add_argument("--out", help="run folder (must be new)")
    s.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR, or extend a "
                   "finished one with a larger --epochs")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("baseline", help="train a baseline of the paper's Sec. 6 (violations counted "
                       "by the same monitor)")
    s.add_argument("algorithm", choices=["sac", "cpo", "recovery_rl", "sqrl"],
                   help="sac: SAC with a violation penalty; cpo: CPO; recovery_rl: RecoveryRL (model-free "
                   "recovery); sqrl: SQRL (Sec. 6, App. C.3)")
    s.add_argument("--task", type=_task)
    s.add_argument("--config", help="YAML file of BaselineConfig keys (total_steps, penalty, eval_every, "
                   "warmup, updates_per_step, from_initial, sac: {...}, risk: {...}, cpo: {...}; "
                   "docs/config.md)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key after "
                   "--config, value parsed as YAML (repeatable), e.g. --set sac.tau=0.01 "
                   "--set total_steps=2000")
    s.add_argument("--seed", type=int)
    s.add_argument("--steps", type=_positive_int,
                   help="online real steps to take (default: the task's budget)")
    s.add_argument("--out", help="run folder (must be new)")
    s.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_baseline)

    s = sub.add_parser("sweep", help="tasks x algorithms x seeds as Ray Tune trials, one run folder each "
                       "(needs crabs[sweep]); rerun the same command to resume")
    s.add_argument("--tasks", type=_task, nargs="+", required=True)
    s.add_argument("--algorithms", nargs="+", required=True, metavar="ALGORITHM",
                   choices=["crabs", "crabs_handcrafted", "sac", "cpo", "recovery_rl", "sqrl"],
                   help="crabs, its ablation crabs_handcrafted (Sec. 6: a fixed handcrafted h) and/or the "
                        "baselines sac, cpo, recovery_rl, sqrl")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="default: 0")
    s.add_argument("--out", required=True, help="sweep folder: OUT/<task>/<algorithm>/seed<k> per trial, "
                   "OUT/sweep.json at the end")
    s.add_argument("--set", action="append", metavar="[ALGORITHM:]KEY=VALUE",
                   help="override one config key of every trial, or with ALGORITHM: of that algorithm's "
                        "(repeatable), e.g. --set sac.tau=0.01 --set crabs:epochs=4")
    s.add_argument("--grid", action="append", metavar="[ALGORITHM:]KEY=[V1,V2,...]",
                   help="one more dimension of the sweep: a trial per value (repeatable; folders "
                        "OUT/<task>/<algorithm>/KEY=V/seed<k>), e.g. --grid crabs:sac.tau=[0.005,0.01]")
    s.add_argument("--epochs", type=_positive_int, help="CRABS epochs (default: the task's config)")
    s.add_argument("--steps", type=_positive_int, help="the baselines' online real steps, the same on every "
                   "task (default: --budget's)")
    s.add_argument("--budget", default="crabs", metavar="crabs|paper|Kx",
                   help="the baselines' online real steps per task: crabs (default; about a CRABS run's env "
                        "steps on that task), paper (the paper's 10^6) or a multiple of crabs such as 3x")
    s.add_argument("--cpus-per-trial", type=_positive_int, default=1,
                   help="CPUs (and torch threads) per trial (default 1)")
    s.add_argument("--num-cpus", type=_positive_int,
                   help="CPUs of the local Ray instance (default: all; not with --address)")
    s.add_argument("--address", help="attach to this Ray cluster (e.g. auto, or HOST:6379) instead of "
                   "starting a local one; OUT must be on a filesystem its nodes share")
    s.add_argument("--retries", type=int, default=0,
                   help="restarts of a crashed trial (each resumes its run folder) before it counts as "
                        "failed (default 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("compare", help="Figure 2 of several run folders (CRABS and baselines) and "
                       "their violations and returns")
    s.add_argument("runs", nargs="+", help="run folders")
    s.add_argument("--out", default="compare.png", help="figure file (default compare.png)")
    s.add_argument("--each", action="store_true",
                   help="one curve per run (default: per task and algorithm, mean and one standard "
                        "deviation over the runs, as the paper's Figure 2)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("verify", help="audit a CRABS run's certificate (R.1-R.3) with an independent "
                       "adversary and true-dynamics rollouts; exit status 1 if the run has no certificate, "
                       "it is unsound or R.3 fails")
    s.add_argument("run", help="run folder")
    s.add_argument("--system", metavar="MODULE[:FUNCTION]",
                   help="the run's system, for a run of your own (see crabs train --system)")
    s.add_argument("--which", choices=["delivered", "last"], default="delivered",
                   help="the delivered (policy, h) pair (default) or the training state's")
    s.add_argument("--states", type=int, default=200, help="certified start states of the rollouts")
    s.add_argument("--horizon", type=_positive_int, help="rollout length (default: the task's horizon)")
    s.add_argument("--chains-mult", type=_positive_int, default=4,
                   help="the fresh adversary's chains, as a multiple of the run's")
    s.add_argument("--steps", type=_positive_int, default=200, help="the fresh adversary's MALA steps")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("render", help="an animation of a CRABS run's delivered policy from s0, with h(s) "
                       "along the way; exit status 1 if the episode violated")
    s.add_argument("run", help="run folder")
    s.add_argument("--out", required=True, help="animation file: .gif, or .mp4 (needs imageio-ffmpeg)")
    s.add_argument("--system", metavar="MODULE[:FUNCTION]",
                   help="the run's system, for a run of your own (see crabs train --system)")
    s.add_argument("--which", choices=["delivered", "last"], default="delivered",
                   help="the delivered (policy, h) pair (default) or the training state's")
    s.add_argument("--frames", type=_positive_int, default=100,
                   help="frames, sub-sampled evenly from the episode (default 100)")
    s.add_argument("--fps", type=_positive_int, default=20, help="frames per second (default 20)")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("oracle", help="ground truth for the 2-D pendulum tasks")
    s.add_argument("--task", type=_task, required=True)
    s.set_defaults(func=cmd_oracle)

    s = sub.add_parser("make-initial", help="regenerate the shipped safe initial policies")
    s.add_argument("--task", type=_task, action="append",
                   help="task to regenerate (repeatable; default: all four)")
    s.add_argument("--out", help="output folder (default: the package's crabs/data)")
    s.set_defaults(func=cmd_make_initial)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, FileNotFoundError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"crabs: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crabs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
