"""Auditing a run's certificate: how much of its promise (R.1-R.3 of Sec. 3) holds, checked with
tools independent of those that trained it.

* R.1/R.2, C_h inside the safe set (true by construction, Sec. 3): uniform states of the box, the
  certified fraction and how many certified states are unsafe (must be 0); and s0 in C_h, h(s0) >= 0
  (not true by construction where s0 lies on the state box's edge: the box term B_box is 1 there).
* R.3 under the learned model: a fresh adversary (its own seed, ``chains_mult`` times the run's
  chains, ``steps`` MALA steps on U(s, pi(s), h) over C_h) and U at uniform certified states, and
  at up to ``n`` certified states drawn from the slabs next to the safety limits (``EDGE_WIDTH`` of
  each limit, where B_safe's cliff can leave slivers too thin for the uniform ones), and at the
  certified states the mean policy visits under the model's mean prediction from ``states`` of the
  uniform ones for ``horizon`` steps (a closed loop creeping out of C_h crosses its edge in a strip
  too thin for uniform samples): the largest U found (the adversary's: the largest any chain reached
  at any step, not only where the chains stand at the end) and how many certified states have U > 0;
  and, where some U > 0, the worst of all these states with each ensemble member's h at its
  predicted next state (``worst_counter_example``: do the members agree that it leaves C_h?) and
  the coordinates in which it lies beyond the run's data.
* R.3 in the true dynamics (for systems whose ``reset`` accepts ``options={"state": s}``, as the
  built-in tasks and ``make_state_env`` environments do; for others this part is skipped, and the
  result says so, before any step is taken): from uniform certified states, the mean policy's
  true next state (does it stay in C_h?) and a rollout of ``horizon`` steps (does it stay safe?).
  These steps are an audit in simulation, not training: they go through a safety monitor that
  writes its own ledger, ``RUN/verify/ledger.jsonl``, and do not touch the run's counts.
* For the 2-D pendulum tasks, the oracle's judgement: certified states that are not viable.

A run none of whose epochs certified a triple (start-up included) has no certificate, only an
uncertified fit of h: the result says so (``has_certificate`` false) and the verdict is NO
CERTIFICATE, whatever the audit finds.

It checks the (policy, h) pair the run delivers (``which="delivered"``, the ``final_policy`` pair)
or the training state's (``"last"``). U is under the model the pair was certified under: the delivered
pair's own (saved with it; runs from before that was saved: the last model), or the last model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crabs.barrier import Barrier, U_pi
from crabs.config import Config, MALAConfig
from crabs.envs import ledger_totals, read_ledger
from crabs.mala import Adversary
from crabs.rollout import Step, mean_actor, run_episode
from crabs.runs import RunDir, checkpoint_rows, write_json
from crabs.safety import SafetyState, epochs_certified
from crabs.states import EDGE_WIDTH, certified_box, certified_samples, edge_states, rollout_states, uniform
from crabs.system import System


@dataclass
class RunPair:
    """A CRABS run's (policy, h) pair and its last model, read from the run folder."""

    system: System
    cfg: Config
    policy: torch.nn.Module
    h: Barrier
    model: torch.nn.Module
    epochs: int              # epochs the run trained
    pair_epoch: int          # the epoch the pair's policy is from
    certified_at_end: bool   # the training state's last check
    certified_epochs: int = -1   # epochs whose triple was certified (0: never; -1: not recorded)
    data_states: torch.Tensor | None = None   # the run's replay states (where its model was trained)


def load_run(run_dir: str | Path, system: System | None = None, which: str = "delivered") -> RunPair:
    """The run's (policy, h) pair ``which`` (``"delivered"``: what the run hands over; ``"last"``:
    the training state's pair, the last certified policy acting if the final triple was not
    certified) and its last model, from config.yaml and checkpoints/last.pt (weights only): no
    trainer is built."""
    from crabs.loop import CRABS
    from crabs.system import builtin_system, make_barrier, make_model

    if which not in ("delivered", "last"):
        raise ValueError(f"which must be 'delivered' or 'last', got {which!r}")
    cfg, blob = CRABS.read_run(run_dir, why=": only CRABS runs have a certificate")
    if system is None:
        system = builtin_system(cfg.task, cfg.sac.hidden, cfg.sac.act)
    elif system.name != cfg.task:
        raise ValueError(f"{str(run_dir)!r} holds a run of {cfg.task!r}, not {system.name!r}")
    safety = SafetyState.from_checkpoint(blob, cfg.barrier.dilation)
    model = make_model(system, cfg)
    model.load_state_dict(blob["model"]["model"])
    buf = blob["buffer"]["s"]
    if cfg.dynamics.support_radius > 0 and len(buf):   # the states the model was trained on, as in training
        low = torch.as_tensor(system.state_low, dtype=torch.float32)
        half = (torch.as_tensor(system.state_high, dtype=torch.float32) - low) / 2   # as in training
        model.set_support(buf, half, gen=torch.Generator().manual_seed(cfg.seed + 1))
    h = make_barrier(system, cfg)
    h.load_state_dict(blob["barrier"]["h"])
    policy = copy.deepcopy(system.initial_policy)
    policy.load_state_dict(blob["sac"]["policy"])
    epochs = int(blob["epoch"])
    pair_epoch, best = safety.delivered(cfg.final_policy, epochs) if which == "delivered" else \
        (safety.acting_epoch(epochs), None)
    if best is not None:   # the delivered pair, under the model it was certified under
        policy.load_state_dict(best["policy"])
        h.load_state_dict(best["h"])
        if "model" in best:
            model.load_state_dict(best["model"])
    elif not safety.certified:   # the last certified policy is the one that acts
        policy.load_state_dict(safety.safe_policy)
    rows = checkpoint_rows(blob)
    n_cert = len(epochs_certified(rows)) if rows is not None else -1
    return RunPair(system, cfg, policy.eval(), h.eval(), model.eval(), epochs, pair_epoch, safety.certified,
                   n_cert, buf)


class ResetIgnored(ValueError):
    """The environment's reset does not start at a given state (``options={"state": s}``)."""


@torch.no_grad()
def _rollouts(pair: RunPair, starts: torch.Tensor, horizon: int, audit: RunDir) -> dict:
    """True-dynamics rollouts of the mean policy from each start state, through a monitor writing
    the ledger of the audit folder ``audit``."""
    h, sys = pair.h, pair.system
    # the audit ledger's counts continue across audits, as a run's do across resumes
    env = audit.monitor(sys, ledger_totals(read_ledger(audit.ledger)), "verify")
    act = mean_actor(pair.policy)
    tally = {"one_step_exits": 0, "left": 0, "violations": 0}
    worst = None
    try:
        for i, s0 in enumerate(starts.double().numpy()):
            exited = False

            def check_reset(s, s0=s0, done=i):
                if not np.allclose(s, s0, atol=1e-6):
                    # after earlier rollouts (steps taken, maybe violations found) it is an error,
                    # never a skip that would drop what they found
                    error = ResetIgnored if done == 0 else ValueError
                    after = f", after {done} rollouts that started there (audit ledger)" if done else ""
                    raise error("the environment's reset ignored options={'state': s} (it returned "
                                f"{np.round(s, 4).tolist()} for {np.round(s0, 4).tolist()}{after})")

            def on_step(st: Step, s0=s0) -> None:
                nonlocal exited, worst
                inside = float(h(torch.as_tensor(st.s2, dtype=torch.float32))) >= 0
                if st.t == 0 and not inside:
                    tally["one_step_exits"] += 1
                exited |= not inside
                if st.cost > 0:
                    tally["violations"] += 1
                    worst = worst or {"start": s0.tolist(), "step": st.t + 1}

            run_episode(env, act, on_step, options={"state": s0}, max_steps=horizon, on_reset=check_reset)
            tally["left"] += int(exited)
    finally:
        env.close()
    return {"starts": len(starts), "one_step_exits_C_h": tally["one_step_exits"],
            "rollouts_leaving_C_h": tally["left"], "rollouts_violating": tally["violations"],
            "first_violating_start": worst}


def _u_stats(part: str, h, model, policy, states: torch.Tensor) -> dict:
    """``{part}_certified_states``, ``{part}_max_U`` (None when there are none) and
    ``{part}_U_positive`` of U^pi (Eq. 4) at ``states`` (certified states) under ``model``."""
    u = U_pi(h, model, policy, states).detach() if len(states) else torch.zeros(0)
    return {f"{part}_certified_states": len(states), f"{part}_max_U": float(u.max()) if len(u) else None,
            f"{part}_U_positive": int((u > 0).sum())}


@torch.no_grad()
def worst_counter_example(h: Barrier, model, policy, states: torch.Tensor,
                          data: torch.Tensor | None = None) -> dict | None:
    """The certified state among ``states`` with the largest U^pi (Eq. 4), if U > 0 there (else
    None): the state, h(s), U and each ensemble member's h at its mean prediction of the next state
    under the mean policy. They tell the two reasons a certificate fails apart
    (docs/troubleshooting.md): every member's h(s') < 0, the closed loop leaves C_h under all of them
    (or C_h's edge rises too slowly); some >= 0 and some < 0, the members disagree (often away from
    the data). With ``dynamics.region_std`` or ``support_radius`` U also counts the members' spread
    or the distance from the data, so U > 0 is possible with every member's h(s') >= 0.

    With ``data`` (the run's replay states), ``beyond_data`` lists each coordinate in which the
    state lies outside the data's range (its name in h's spec, its value, the data's min and max):
    the members were never trained there."""
    states = states[h(states) >= 0]
    if not len(states):
        return None
    u = U_pi(h, model, policy, states)
    i = int(u.argmax())
    if float(u[i]) <= 0:
        return None
    s = states[i : i + 1]
    nxt = model.means(s, policy.mean_action(s))[:, 0]       # (K, d): each member's next state
    out = {"state": [round(float(v), 6) for v in s[0]], "h": float(h(s)[0]), "U": float(u[i]),
           "members_h_next": [float(v) for v in h(nxt)]}
    if data is not None and len(data):
        lo, hi = data.amin(0), data.amax(0)
        out["beyond_data"] = [{"coordinate": h.spec.state_names[j], "value": float(s[0, j]),
                               "data": [float(lo[j]), float(hi[j])]}
                              for j in range(s.shape[1]) if not lo[j] <= s[0, j] <= hi[j]]
    return out


def fresh_adversary(low, high, mala: MALAConfig, dim: int, chains_mult: int = 4, seed: int = 0) -> Adversary:
    """The audit's own adversary: ``chains_mult`` times the run's pool, a seed of its own."""
    chains = chains_mult * mala.pool(dim)
    return Adversary(low, high, dataclasses.replace(mala, chains=chains), seed=seed + 7919)


def adversary_search(adv: Adversary, h, model, policy, steps: int) -> tuple[float, torch.Tensor]:
    """Run ``adv`` for ``steps`` MALA steps. Returns the largest U^pi any chain inside C_h reached at
    any step (a chain that stood on a counter-example and moved on still counts: the chains' last
    positions alone can miss it) and the states where each step's best chain stood, with the last
    positions of all chains (for :func:`worst_counter_example`)."""
    best, seen = -math.inf, []
    for _ in range(steps):
        adv.step(h, model, policy)
        u, x = adv.best()
        if x is not None:
            best = max(best, u)
            seen.append(x)
    last = adv.candidates() if adv.state is not None else torch.zeros(0, len(adv.low))
    return best, torch.cat([torch.stack(seen), last]) if seen else last


def verify_run(run_dir: str | Path, system: System | None = None, which: str = "delivered",
               n: int = 20000, states: int = 200, horizon: int | None = None, chains_mult: int = 4,
               steps: int = 200, seed: int = 0) -> dict:
    """The audit described in the module docstring; also written to ``RUN/verify/verify.json``."""
    pair = load_run(run_dir, system, which)
    h, model, policy, sys, cfg = pair.h, pair.model, pair.policy, pair.system, pair.cfg
    torch.manual_seed(seed)       # the audit draws from its own generators
    gen = torch.Generator().manual_seed(seed + 1)
    box_gen = torch.Generator().manual_seed(seed + 2)
    low = torch.as_tensor(sys.state_low, dtype=torch.float32)
    high = torch.as_tensor(sys.state_high, dtype=torch.float32)
    out = Path(run_dir) / "verify"
    out.mkdir(exist_ok=True)
    # R.1 / R.2
    r1 = r1_at_s0(h, sys.spec)
    box = uniform(low, high, n, gen)
    with torch.no_grad():
        cert = h(box) >= 0
    unsafe = ~sys.spec.is_safe_torch(box)
    # R.3 under the model: a fresh adversary, and uniform certified states
    adv = fresh_adversary(sys.state_low, sys.state_high, cfg.mala, sys.spec.dim, chains_mult, seed)
    adv_max, adv_seen = adversary_search(adv, h, model, policy, steps)
    c_box = certified_box(h, low, high, cfg.mala.box_samples, cfg.mala.box_scale, box_gen)
    inside = certified_samples(h, c_box, n, gen)
    # and C_h's slabs next to the safety limits, where B_safe's cliff makes thin slivers (drawn
    # after everything above, so the other parts of the audit are as they were)
    edge = edge_states(h, (low, high), sys.spec, n, EDGE_WIDTH, gen)
    # and the states of C_h that the mean policy visits under the model from ``states`` of the
    # uniform certified states, for the horizon: where a closed loop creeps out of C_h (no draws)
    horizon = sys.spec.horizon if horizon is None else horizon
    roll = rollout_states(h, model, policy, inside[:states], horizon)
    result = {
        "run": str(run_dir), "task": sys.name, "which": which,
        "certified_at_end": bool(pair.certified_at_end),
        # False: no epoch ever certified a triple, so h is an uncertified fit and not a certificate
        "has_certificate": pair.certified_epochs != 0,
        "epochs": pair.epochs, "pair_epoch": pair.pair_epoch,
        "R1_R2": {"box_samples": n, "certified": float(cert.float().mean()),
                  "certified_but_unsafe": int((cert & unsafe).sum()), **r1},
        "R3_model": {"adversary_chains": adv.cfg.chains, "adversary_steps": steps,
                     "adversary_max_U": adv_max,
                     **_u_stats("uniform", h, model, policy, inside),
                     "edge_width": EDGE_WIDTH, **_u_stats("edge", h, model, policy, edge),
                     "rollout_starts": min(states, len(inside)), "rollout_steps": horizon,
                     **_u_stats("rollout", h, model, policy, roll),
                     # where the largest U of all these states lies, and what the members say there
                     "worst_counter_example": worst_counter_example(
                         h, model, policy, torch.cat([adv_seen, inside, edge, roll]),
                         pair.data_states)},
    }
    if states > 0 and len(inside):
        # a certified state outside the safe set is already an R.1 failure; it cannot start a rollout
        starts = inside[sys.spec.is_safe_torch(inside)]
        starts = starts[torch.randperm(len(starts))[:states]]
        try:
            audit = _rollouts(pair, starts, horizon, RunDir(out))
        except ResetIgnored as e:   # raised at the first start's reset, before any step: not checked
            audit = {"skipped": f"{e}: true-dynamics rollouts need an environment that starts there"}
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
    result["R3_model_holds"] = (m["adversary_max_U"] <= 0 and m["uniform_U_positive"] == 0
                                and m["edge_U_positive"] == 0 and m["rollout_U_positive"] == 0)
    result["R3_holds"] = result["R3_model_holds"] and t.get("rollouts_leaving_C_h", 0) == 0
    write_json(out / "verify.json", result)
    return result


@torch.no_grad()
def r1_at_s0(h, spec) -> dict:
    """R.1 at s0 itself: ``h_s0`` and whether s0 lies in C_h (``s0_in_C_h``, h(s0) >= 0)."""
    v = float(h(torch.as_tensor(spec.s0_array(), dtype=torch.float32)[None])[0])
    return {"h_s0": v, "s0_in_C_h": v >= 0}


def passes(r: dict, true_dynamics: bool = True) -> bool:
    """:func:`verify_run`'s result passes: a certificate, sound, s0 in C_h (R.1), and R.3 holding under
    the pair's own model and, with ``true_dynamics``, in the true dynamics too."""
    r3 = r["R3_holds"] if true_dynamics else r["R3_model_holds"]
    return bool(r["has_certificate"] and r["sound"] and r["R1_R2"]["s0_in_C_h"] and r3)


def _worst_text(m: dict) -> str:
    w = m.get("worst_counter_example")
    if not w:
        return ""
    lo, hi = min(w["members_h_next"]), max(w["members_h_next"])
    said = ("every member's next state leaves C_h" if hi < 0 else "the members disagree" if lo < 0
            else "every member's next state is in C_h: U is the model's spread or distance from its data")
    beyond = "".join(f"; {b['coordinate']} {b['value']:.3g} where the data reach {b['data'][0]:.3g} to "
                     f"{b['data'][1]:.3g}" for b in w.get("beyond_data", []))
    return (f"; the worst at h(s) {w['h']:.3g}: U {w['U']:.3g}, the members' h(s') {lo:.3g} to {hi:.3g} "
            f"({said}{beyond})")


def summary_line(r: dict) -> str:
    """:func:`verify_run`'s result in one line, ending in the verdict: sound or not, and whether
    R.3 holds under the pair's own model and in the true dynamics (the bench scripts print it)."""
    m, d, c = r["R3_model"], r.get("R3_true_dynamics", {}), r["R1_R2"]
    line = (f"certified {c['certified']:.3f} of the box, certified-but-unsafe {c['certified_but_unsafe']}; "
            f"model: adversary max U {m['adversary_max_U']:.3g} ({m['adversary_chains']} chains), U > 0 at "
            f"{m['uniform_U_positive']} of {m['uniform_certified_states']} certified states"
            + (f" and {m['edge_U_positive']} of {m['edge_certified_states']} next to the limits"
               if "edge_certified_states" in m else "")
            + (f" and {m['rollout_U_positive']} of {m['rollout_certified_states']} the policy visits "
               f"under the model" if "rollout_certified_states" in m else "") + _worst_text(m) + "; ")
    if "skipped" in d or not d.get("starts"):
        why = d.get("skipped", "no rollouts: none asked for, or no certified state to start from")
        line += f"true dynamics not checked ({why})"
    else:
        line += (f"true dynamics from {d.get('starts', 0)} certified states: left C_h after one step "
                 f"{d.get('one_step_exits_C_h')}, rollouts leaving C_h {d.get('rollouts_leaving_C_h')}, "
                 f"violating {d.get('rollouts_violating')} ({d.get('horizon')} steps)")
    if "oracle" in r:
        line += f"; certified but not viable {r['oracle']['certified_not_viable_states']}"
    if r.get("has_certificate") is False:
        return f"{line} -> NO CERTIFICATE (no epoch certified a triple: the initial policy acted throughout)"
    verdict = "sound" if r["sound"] else "UNSOUND"
    if c.get("s0_in_C_h") is False:   # (verify reports before it existed have no such key)
        verdict += f", R.1 FAILS at s0 (h(s0) {c['h_s0']:.3g})"
    verdict += ", R.3 holds under the model" if r["R3_model_holds"] else ", R.3 FAILS under the model"
    if r["R3_model_holds"] and "skipped" not in d and d.get("starts"):
        verdict += " and in the true dynamics" if r["R3_holds"] else " but not in the true dynamics"
    return f"{line} -> {verdict}"


__all__ = ["ResetIgnored", "RunPair", "adversary_search", "fresh_adversary", "load_run", "passes",
           "summary_line", "verify_run", "worst_counter_example"]
