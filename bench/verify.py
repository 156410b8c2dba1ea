"""Audit finished CRABS runs with ``crabs verify`` and print one line per run (R.1/R.2, R.3 under
the model with a fresh adversary, R.3 in the true dynamics from certified states, the oracle).

    python bench/verify.py RUN [RUN ...] [--which delivered|last]
"""

from __future__ import annotations

import argparse
import os
import time

from crabs.verify import verify_run


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
        m, d = r["R3_model"], r.get("R3_true_dynamics", {})
        name = os.path.basename(os.path.normpath(run))
        c = r["R1_R2"]
        line = (f"{r['task']} {name}: certified {c['certified']:.3f} of the box, certified-but-unsafe "
                f"{c['certified_but_unsafe']}; model: adversary max U {m['adversary_max_U']:.3g} "
                f"({m['adversary_chains']} chains), U > 0 at {m['uniform_U_positive']} of "
                f"{m['uniform_certified_states']} certified states; true dynamics from {d.get('starts', 0)} "
                f"certified states: left C_h after one step {d.get('one_step_exits_C_h')}, rollouts "
                f"leaving C_h {d.get('rollouts_leaving_C_h')}, violating {d.get('rollouts_violating')} "
                f"({d.get('horizon')} steps)")
        if "oracle" in r:
            line += f"; certified but not viable {r['oracle']['certified_not_viable_states']}"
        verdict = ("sound" if r["sound"] else "UNSOUND") + (", R.3 holds" if r["R3_holds"] else ", R.3 FAILS")
        print(f"{line} -> {verdict} ({time.time() - t:.0f} s)", flush=True)
        ok &= r["sound"] and r["R3_holds"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
