"""Audit finished CRABS runs with ``crabs verify`` and print one line per run (R.1/R.2, R.3 under
the model with a fresh adversary, R.3 in the true dynamics from certified states, the oracle).

    python bench/verify.py RUN [RUN ...] [--which delivered|last]
"""

from __future__ import annotations

import argparse
import os
import time

from crabs.verify import passes, summary_line, verify_run


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--which", choices=["delivered", "last"], default="delivered")
    args = p.parse_args()
    print(f"# crabs verify ({args.which} pair), {os.cpu_count()} cores, load {os.getloadavg()}")
    ok = True
    for run in args.runs:
        t = time.time()
        r = verify_run(run, which=args.which)
        name = os.path.basename(os.path.normpath(run))
        print(f"{r['task']} {name}: {summary_line(r)} ({time.time() - t:.0f} s)", flush=True)
        ok &= passes(r)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
