"""End-to-end baseline runs (Sec. 6): train baselines on a task for several seeds (one run at a
time) and print their violations (offline ones apart), final evaluation return and wall-clock;
with --crabs, draw them with CRABS run folders in one Figure 2 (``crabs compare``).

    python bench/baselines.py --task upright --algorithms sac cpo recovery_rl sqrl --seeds 0 1 \\
        [--steps N] [--out bench/runs] [--crabs bench/runs/upright-s0-...]
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


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--task", required=True, choices=["upright", "tilt", "move", "swing"])
    p.add_argument("--algorithms", nargs="+", default=["sac", "cpo", "recovery_rl", "sqrl"],
                   choices=["sac", "cpo", "recovery_rl", "sqrl"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, help="online real steps (default: the task's budget)")
    p.add_argument("--out", default="bench/runs")
    p.add_argument("--crabs", nargs="*", default=[], help="CRABS run folders to draw alongside")
    args = p.parse_args()
    print(f"# {args.task}: baselines {', '.join(args.algorithms)}, seeds {args.seeds}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    dirs = []
    for algo in args.algorithms:
        for seed in args.seeds:
            out = Path(args.out) / f"{args.task}-{algo}-s{seed}-{int(time.time())}"
            extra = ["--steps", str(args.steps)] if args.steps else []
            subprocess.run([sys.executable, "-m", "crabs.cli", "baseline", algo, "--task", args.task,
                            "--seed", str(seed), "--out", str(out), "--quiet", *extra],
                           check=True, stdout=subprocess.DEVNULL)
            s = json.loads((out / "summary.json").read_text())
            print(f"{algo} {args.task} seed {seed}: violations {s['violations']} (offline "
                  f"{s['offline_violations']} in {s['offline_steps']} steps), final return "
                  f"{s['final_eval_return']:.4g}, mean evaluation return {s['mean_return']:.4g}, "
                  f"env steps {s['env_steps']}, wall-clock {s['wall_clock_s'] / 60:.1f} min", flush=True)
            dirs.append(str(out))
    fig = Path(args.out) / f"compare-{args.task}-{int(time.time())}.png"
    subprocess.run([sys.executable, "-m", "crabs.cli", "compare", *args.crabs, *dirs, "--out", str(fig)],
                   check=True)
    print(f"# load now {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
