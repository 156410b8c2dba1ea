"""End-to-end CRABS runs: train a task for several seeds (one at a time) and print violations,
final evaluation return and wall-clock against the targets of the core issue.

    python bench/train.py --task upright --seeds 0 1 2 3 [--out bench/runs] [--config FILE]
    python bench/train.py --task swing --resume DIR     # finish an interrupted run (its wall-clock
                                                        # counts every part: summary.json adds them)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

TARGETS = {  # task: (minimum final evaluation return, wall-clock limit in minutes)
    "upright": (-0.25, 15), "tilt": (-3.0, 15), "move": (400.0, 60), "swing": (20.0, 120),
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--task", required=True, choices=list(TARGETS))
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 3")
    p.add_argument("--out", default="bench/runs")
    p.add_argument("--config")
    p.add_argument("--resume", metavar="DIR", help="continue one interrupted run of --task")
    args = p.parse_args()
    if args.resume and (args.seeds is not None or args.config):
        p.error("--resume continues the run in DIR with its own seed and config: "
                "drop --seeds/--config")
    seeds = [0, 1, 2, 3] if args.seeds is None else args.seeds
    goal, minutes = TARGETS[args.task]
    print(f"# {args.task}: target violations 0, final return >= {goal}, wall-clock <= {minutes} min")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    rows = []
    if args.resume:  # one run, continued where it stopped
        out = Path(args.resume)
        task = yaml.safe_load((out / "config.yaml").read_text()).get("task")
        if task != args.task:
            raise SystemExit(f"{out} holds a {task} run, not {args.task}")
        jobs = [(out, ["--resume", str(out)])]
    else:
        jobs = []
        for seed in seeds:
            out = Path(args.out) / f"{args.task}-s{seed}-{int(time.time())}"
            extra = ["--config", args.config] if args.config else []
            jobs.append((out, ["--task", args.task, "--seed", str(seed), "--out", str(out), *extra]))
    for out, train_args in jobs:
        subprocess.run([sys.executable, "-m", "crabs.cli", "train", *train_args, "--quiet"],
                       check=False, stdout=subprocess.DEVNULL)
        s = json.loads((out / "summary.json").read_text())
        seed = s["seed"]
        ok = s["violations"] == 0 and s["final_eval_return"] >= goal and s["wall_clock_s"] <= 60 * minutes
        rows.append(ok)
        print(f"{args.task} seed {seed}: violations {s['violations']}, final return "
              f"{s['final_eval_return']:.4g}, wall-clock {s['wall_clock_s'] / 60:.1f} min, env steps "
              f"{s['env_steps']}, certified volume {s['certified_volume']:.3f}, model failures "
              f"{s.get('model_failures', '?')} -> {'PASS' if ok else 'FAIL'}",
              flush=True)
        if "final_policy_epoch" in s:  # which policy was delivered, and what the last epoch's scored
            print(f"  delivered policy ({s['final_policy']}): epoch {s['final_policy_epoch']} of "
                  f"{s['epochs']}; the last epoch's evaluation {s['last_epoch_eval_return']:.4g}", flush=True)
        if "final_eval_end_h" in s:  # h well above 0 here: the policy, not C_h, limits the return
            end = ", ".join(f"{x:.3g}" for x in s["final_eval_end_state"])
            print(f"  final evaluation ends at ({end}), h {s['final_eval_end_h']:.3f} there, "
                  f"lowest h on the way {s['final_eval_min_h']:.3f}", flush=True)
        if args.task in ("upright", "tilt"):  # is every certified state truly viable?
            from crabs.judge import judge_run

            j = judge_run(out)
            print(f"  certificate vs oracle: certified {j['certified']:.3f} of the box, kernel "
                  f"{j['viable']:.3f}, certified but not viable {j['certified_not_viable_states']} "
                  f"grid states, kernel covered {j['kernel_covered']:.2f}", flush=True)
            if j["best"] is not None and s.get("final_policy") == "best":
                b = j["best"]
                print(f"  delivered certificate vs oracle: certified {b['certified']:.3f}, certified but "
                      f"not viable {b['certified_not_viable_states']} grid states", flush=True)
    print(f"# {sum(rows)}/{len(rows)} seeds meet every target; load now {os.getloadavg()}")
    return 0 if all(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
