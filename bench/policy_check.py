"""Why does a run's policy fail Alg. 4's check? From a run's last checkpoint (copied, so the run is
not touched): one epoch's constrained SAC (Alg. 2 line 6), then the adversarial policy steps until
the adversary is quiet (Alg. 4 lines 5-6) with every audit's finds printed, under
``barrier.audit_train`` once and until_fixed (the same SAC policy for both), and, where the check
passes, an evaluation of the mean policy on the true dynamics (in the copy's own ledger).

    python bench/policy_check.py RUN [--modes once until_fixed] [--anchor BETA]
                                 [--probe-states "-0.3,0 -0.36,0"]

``--anchor`` replaces the run's ``sac.adv_anchor`` for the check (the SAC epoch keeps the run's).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import tempfile
import time

import torch

from crabs.loop import CRABS


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--modes", nargs="+", default=["once", "until_fixed"])
    p.add_argument("--probe-states", default="", help="states to print h and the mean action at")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--anchor", type=float, default=None, help="sac.adv_anchor for the check")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dst = tempfile.mkdtemp(prefix="crabs-policy-check-")
    shutil.rmtree(dst)
    shutil.copytree(args.run, dst)
    folder, cfg, system, _ = CRABS.open(dst, True, None, None, None, False)
    c = CRABS(system, cfg, folder, progress=False)
    c.resume()
    print(f"{args.run}: epoch {c.epoch}, remembered counter-examples {len(c.certifier.memory)}")
    t = time.time()
    c.optimise_policy()
    print(f"one epoch of SAC: {time.time() - t:.0f} s")
    after_sac = copy.deepcopy(c.sac.state_dict())
    cer, audit = c.certifier, c.certifier.audit

    def logged_audit(h, model, policy):
        with torch.no_grad():
            remembered = len(cer.counter_examples(h, model, policy, cer.memory))
        w = audit(h, model, policy)
        where = f", e.g. {[round(v, 3) for v in w[0].tolist()]}" if len(w) else ""
        print(f"  audit: {len(w)} counter-examples ({remembered} remembered){where}")
        return w

    cer.audit = logged_audit
    memory = cer.memory.clone()
    if args.anchor is not None:
        print(f"sac.adv_anchor for the check: {args.anchor} (the run's: {c.cfg.sac.adv_anchor})")
        c.cfg = c.cfg.replace(sac={"adv_anchor": args.anchor})
    for mode in args.modes:
        c.sac.load_state_dict(after_sac)
        cer.memory = memory.clone()
        cer.cfg = dataclasses.replace(cer.cfg, audit_train=mode)
        c.adv.invalidate()
        t = time.time()
        ok, steps = c.ensure_policy_certified(cfg.barrier.max_steps)
        print(f"audit_train {mode}: quiet {ok} after {steps} steps ({time.time() - t:.0f} s)")
        for s in filter(None, args.probe_states.split(" ")):
            x = torch.tensor([[float(v) for v in s.split(",")]])
            with torch.no_grad():
                hx, ax = float(c.h(x)), float(c.policy.mean_action(x)[0, 0])
            print(f"  at {s}: h {hx:.3f}, mean action {ax:.3f}")
        if ok:
            r = c.evaluate()
            print(f"  evaluation: return {r['eval_return']:.3f}, ends at {r['eval_end_state']}, "
                  f"lowest h {r['eval_min_h']:.3f}")
    shutil.rmtree(dst, ignore_errors=True)


if __name__ == "__main__":
    main()
