"""Do two run folders hold the same run? For a change that must leave behaviour unchanged: the same
command before and after it, compared on everything but timing.

    python bench/same_run.py BEFORE AFTER [BEFORE AFTER ...]

Per pair: the summary's final_eval_return, violations, env_steps (and every other summary field
but wall-clock), the per-epoch eval_return column side by side, and whether every other column of
metrics.csv (all but t_* and epoch_s) is identical. Exit status 1 if any pair differs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

TIMING = ("wall_clock_s", "epoch_s")


def compare(before: Path, after: Path) -> bool:
    sb, sa = (json.loads((d / "summary.json").read_text()) for d in (before, after))
    rb, ra = (list(csv.DictReader((d / "metrics.csv").read_text().splitlines())) for d in (before, after))
    print(f"{sb['task']} seed {sb['seed']}: {before} vs {after}")
    for k in ("final_eval_return", "violations", "env_steps"):
        print(f"  {k:18s} {sb[k]!s:>22s} {sa[k]!s:>22s}  {'same' if sb[k] == sa[k] else 'DIFFERENT'}")
    other = [k for k in sb if k not in TIMING and k not in ("final_eval_return", "violations", "env_steps")]
    summary_same = all(sb[k] == sa.get(k) for k in other) and set(sb) == set(sa)
    print(f"  other summary fields ({len(other)}): {'same' if summary_same else 'DIFFERENT'}")
    print(f"  {'epoch':>5s} {'eval_return before':>22s} {'eval_return after':>22s}")
    for b, a in zip(rb, ra):
        epoch = b.get("epoch", b.get("eval", ""))
        print(f"  {epoch:>5s} {b.get('eval_return', ''):>22s} {a.get('eval_return', ''):>22s}")
    cols = [k for k in rb[0] if not k.startswith("t_") and k not in TIMING] if rb else []
    rows_same = len(rb) == len(ra) and all(b[k] == a.get(k) for b, a in zip(rb, ra) for k in cols)
    cols_same = list(rb[0]) == list(ra[0]) if rb and ra else rb == ra
    print(f"  metrics.csv: {len(rb)} vs {len(ra)} rows, {len(cols)} columns compared (timing excluded): "
          f"{'identical' if rows_same and cols_same else 'DIFFERENT'}")
    return summary_same and rows_same and cols_same and all(sb[k] == sa[k] for k in
                                                           ("final_eval_return", "violations", "env_steps"))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__)
        return 2
    same = [compare(Path(argv[i]), Path(argv[i + 1])) for i in range(0, len(argv), 2)]
    print(f"# {sum(same)}/{len(same)} pairs identical")
    return 0 if all(same) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
