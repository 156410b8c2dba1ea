"""Auditing a run's certificate: how much of its promise (R.1-R.3 of Sec. 3) holds, checked with
tools independent of those that trained it.

* R.1/R.2, C_h inside the safe set (true by construction, Sec. 3): uniform states of the box, the
  certified fraction and how many certified states are unsafe (must be 0).
* R.3 under the learned model: a fresh adversary (its own seed, ``chains_mult`` times the run's
  chains, ``steps`` MALA steps on U(s, pi(s), h) over C_h) and U at uniform certified states: the
  largest U found and how many certified states have U > 0.
* R.3 in the true dynamics (for systems whose ``reset`` accepts ``options={"state": s}``, as the
  built-in tasks do): from uniform certified states, the mean policy's true next state (does it stay
  in C_h?) and a rollout of ``horizon`` steps (does it stay safe?). These steps are an audit in
  simulation, not training: they go through a safety monitor that writes its own ledger,
  ``RUN/verify/ledger.jsonl``, and do not touch the run's counts.
* For the 2-D pendulum tasks, the oracle's judgement: certified states that are not viable.

It checks the (policy, h) pair the run delivers (``which="delivered"``, the ``final_policy`` pair)
or the training state's (``"last"``); U is always under the run's last model, the only one saved.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml

from crabs.barrier import U_pi
from crabs.config import Config
from crabs.envs import SafetyMonitor, ledger_totals, read_ledger
from crabs.mala import Adversary
from crabs.system import System


def load_run(run_dir: str | Path, system: System | None = None, which: str = "delivered"):
    """The run's CRABS state from its last checkpoint, with the (policy, h) pair ``which`` loaded
    (``"delivered"``: what the run hands over; ``"last"``: the training state's pair, the last
    certified policy acting if the final triple was not certified)."""
    from crabs.loop import CRABS
    from crabs.system import builtin_system

    if which not in ("delivered", "last"):
        raise ValueError(f"which must be 'delivered' or 'last', got {which!r}")
    run = Path(run_dir)
    if not (run / "config.yaml").exists() or not (run / "checkpoints" / "last.pt").exists():
        raise FileNotFoundError(f"{str(run)!r} holds no CRABS checkpoint (config.yaml, checkpoints/last.pt)")
    data = yaml.safe_load((run / "config.yaml").read_text())
    if isinstance(data, dict) and data.get("algorithm"):
        raise ValueError(f"{str(run)!r} holds a {data['algorithm']} run: only CRABS runs have a certificate")
    cfg = Config.from_dict(data)
    if system is None:
        system = builtin_system(cfg.task, cfg.sac.hidden, cfg.sac.act)
    elif system.name != cfg.task:
        raise ValueError(f"{str(run)!r} holds a run of {cfg.task!r}, not {system.name!r}")
    crabs = CRABS(system, cfg, run, progress=False)
    crabs.load_state_dict(torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True))
    certified_at_end = crabs.certified  # the training state's, before a best pair is loaded
    crabs.pair_epoch = crabs.adopt_final_policy() if which == "delivered" else crabs.acting_policy_epoch()
    crabs.certified_at_end = certified_at_end
    if not crabs.certified:  # the last certified policy is the one that acts
        crabs.policy.load_state_dict(crabs.safe_policy_state)
    return crabs


@torch.no_grad()
def _rollouts(crabs, starts: torch.Tensor, horizon: int, ledger: Path) -> dict:
    """True-dynamics rollouts of the mean policy from each start state (through a monitor)."""
    h, policy, sys = crabs.h, crabs.policy, crabs.sys
    # the audit ledger's counts continue across audits, as a run's do across resumes
    env = SafetyMonitor(sys.make_env(), sys.spec, ledger=ledger, tag="verify",
                        counters=ledger_totals(read_ledger(ledger)))
    one_step_exits, left_C_h, violations = 0, 0, 0
    worst = None
    try:
        for s0 in starts.double().numpy():
            s, _ = env.reset(options={"state": s0})
            if not np.allclose(s, s0, atol=1e-6):
                raise ValueError("the environment's reset ignored options={'state': s} (it returned "
                                 f"{np.round(s, 4).tolist()} for {np.round(s0, 4).tolist()}): true-dynamics "
                                 "rollouts need it; pass states=0 to skip them")
            exited = False
            for t in range(horizon):
                a = policy.mean_action(torch.as_tensor(s, dtype=torch.float32)).double().numpy()
                s, _, term, trunc, info = env.step(a)
                inside = float(h(torch.as_tensor(s, dtype=torch.float32))) >= 0
                if t == 0 and not inside:
                    one_step_exits += 1
                exited |= not inside
                if info["cost"] > 0:
                    violations += 1
                    worst = worst or {"start": s0.tolist(), "step": t + 1}
                if term or trunc:
                    break
            left_C_h += int(exited)
    finally:
        env.close()
    return {"starts": len(starts), "one_step_exits_C_h": one_step_exits, "rollouts_leaving_C_h": left_C_h,
            "rollouts_violating": violations, "first_violating_start": worst}


def verify_run(run_dir: str | Path, system: System | None = None, which: str = "delivered",
               n: int = 20000, states: int = 200, horizon: int | None = None, chains_mult: int = 4,
               steps: int = 200, seed: int = 0) -> dict:
    """The audit described in the module docstring; also written to ``RUN/verify/verify.json``."""
    from crabs.runs import write_json

    crabs = load_run(run_dir, system, which)
    torch.manual_seed(seed)       # (loading restored the run's generators: the audit draws its own)
    crabs.tgen.manual_seed(seed + 1)
    crabs.adv.gen.manual_seed(seed + 2)
    h, model, policy, sys = crabs.h, crabs.model, crabs.policy, crabs.sys
    out = Path(run_dir) / "verify"
    out.mkdir(exist_ok=True)
    # R.1 / R.2
    box = crabs.box_samples(n)
    with torch.no_grad():
        cert = h(box) >= 0
    unsafe = ~sys.spec.is_safe_torch(box)
    # R.3 under the model: a fresh adversary, and uniform certified states
    mcfg = dataclasses.replace(crabs.cfg.mala, chains=chains_mult * crabs.cfg.mala.chains)
    adv = Adversary(sys.state_low, sys.state_high, mcfg, seed=seed + 7919)
    for _ in range(steps):
        adv.step(h, model, policy)
    inside = crabs.certified_samples(h, n)
    u = U_pi(h, model, policy, inside).detach() if len(inside) else torch.zeros(0)
    result = {
        "run": str(run_dir), "task": sys.name, "which": which,
        "certified_at_end": bool(crabs.certified_at_end),
        "epochs": crabs.epoch, "pair_epoch": crabs.pair_epoch,
        "R1_R2": {"box_samples": n, "certified": float(cert.float().mean()),
                  "certified_but_unsafe": int((cert & unsafe).sum())},
        "R3_model": {"adversary_chains": mcfg.chains, "adversary_steps": steps,
                     "adversary_max_U": adv.max_U(), "uniform_certified_states": len(inside),
                     "uniform_max_U": float(u.max()) if len(u) else None,
                     "uniform_U_positive": int((u > 0).sum())},
    }
    horizon = sys.spec.horizon if horizon is None else horizon
    if states > 0 and len(inside):
        # a certified state outside the safe set is already an R.1 failure; it cannot start a rollout
        starts = inside[sys.spec.is_safe_torch(inside)]
        starts = starts[torch.randperm(len(starts))[:states]]
        audit = _rollouts(crabs, starts, horizon, out / "ledger.jsonl")
        result["R3_true_dynamics"] = {"horizon": horizon, **audit}
    if sys.name in ("upright", "tilt"):
        from crabs.judge import judge_certificate

        result["oracle"] = judge_certificate(h)
    t = result.get("R3_true_dynamics", {})
    # sound: nothing certified is unsafe or (pendulum) doomed, and no rollout from C_h violated
    result["sound"] = (result["R1_R2"]["certified_but_unsafe"] == 0 and t.get("rollouts_violating", 0) == 0
                       and result.get("oracle", {}).get("certified_not_viable_states", 0) == 0)
    # R.3 (invariance) holds as far as the audit can see: no certified state with U > 0 under the
    # model (the fresh adversary included), and no rollout that left C_h in the true dynamics
    m = result["R3_model"]
    result["R3_holds"] = (m["adversary_max_U"] <= 0 and m["uniform_U_positive"] == 0
                          and t.get("rollouts_leaving_C_h", 0) == 0)
    write_json(out / "verify.json", result)
    return result


__all__ = ["load_run", "verify_run"]
