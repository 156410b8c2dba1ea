"""The safety state of a CRABS run and its decisions, as data with pure transitions.

* Which policy acts: the current one while the (model, h, policy) triple is certified, else the
  last policy that was (initially the given safe policy).
* The best certified (policy, h) pair by evaluation return (``final_policy: best``).
* Per epoch (:class:`EpochPlan`): whether h is carried uncertified (``on_stuck: carry``), regrown,
  by dilation, judged by its volume (``regrow_accept: if_larger``); after Alg. 1 whether its h is
  kept or rolled back; the next dilation.

The loop (loop.py) applies these decisions to the networks; tests drive them directly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from crabs.config import BarrierConfig
from crabs.runs import checkpoint_rows

DILATION_GROWTH = 1.25   # the next dilation after an epoch whose Alg. 1 went quiet ...
DILATION_MAX = 0.6       # ... at most this
DILATION_SHRINK = 0.5    # ... after one that did not
DILATION_MIN = 0.02      # ... at least this


@dataclass(frozen=True)
class EpochPlan:
    """What an epoch does with the certificate before and after Alg. 1."""

    carry: bool    # the triple is uncertified and on_stuck is "carry": h is carved further, for the
                   # last certified policy (which training restarts from), and never rolled back
    regrow: bool   # C_h is regrown before Alg. 1
    dilate: bool   # ... by dilation (else by the rollout refit)
    judge: bool    # ... and the regrown C_h must end up larger than the previous one

    @classmethod
    def decide(cls, c: BarrierConfig, certified: bool) -> EpochPlan:
        carry = c.on_stuck == "carry" and not certified
        regrow = c.regrow and not carry
        return cls(carry, regrow, regrow and c.regrow_mode == "dilate",
                   regrow and c.regrow_accept == "if_larger")

    def keep_certificate(self, found: bool) -> bool:
        """Keep Alg. 1's h (else roll back to the epoch's starting h and optimiser state)?"""
        return found or self.carry


def next_dilation(dilation: float, found: bool) -> float:
    """``regrow_mode: dilate``: grow the dilation after a quiet Alg. 1, halve it after a failed one."""
    if found:
        return min(DILATION_MAX, dilation * DILATION_GROWTH)
    return max(DILATION_MIN, dilation * DILATION_SHRINK)


@dataclass
class SafetyState:
    """Which policy acts and what the run delivers (state dicts, never live networks)."""

    safe_policy: dict              # the last certified policy's weights (what acts while uncertified)
    safe_policy_epoch: int = 0     # its epoch (0: the given initial policy)
    certified: bool = False        # the current triple passed the last check
    best: dict | None = None       # the best certified pair: {"epoch", "return", "policy", "h",
                                   # "model" (the model it was certified under)}
    dilation: float = 0.3          # the next regrowth's dilation (regrow_mode "dilate")

    def acting_epoch(self, epoch: int) -> int:
        """The epoch of the policy that acts: the current one if certified, else the last certified."""
        return epoch if self.certified else self.safe_policy_epoch

    def after_check(self, ok: bool, policy_state: dict, epoch: int) -> None:
        """The epoch's check: a certified policy becomes the last certified one."""
        self.certified = ok
        if ok:
            self.set_safe_policy(policy_state, epoch)

    def refute(self) -> bool:
        """Evidence against the certified triple after its check (a counter-example to R.3 under its
        model, or a real state outside C_h while it acted): it is no longer certified, so until a new
        check passes nothing explores (Alg. 3 is off) and its policy's mean action acts only through
        the guard, like any last certified policy. The policy is kept (training goes on from it, and
        with ``on_stuck: carry`` Alg. 1 carves the counter-examples out for it): reverting to an older
        policy would be no safer, since that one is not certified under the current h and model
        either, and would throw the epoch's learning away. Returns whether anything changed (False
        when the triple was not certified)."""
        if not self.certified:
            return False
        self.certified = False
        return True

    def set_safe_policy(self, policy_state: dict, epoch: int) -> None:
        self.safe_policy = copy.deepcopy(policy_state)
        self.safe_policy_epoch = int(epoch)

    def offer_best(self, epoch: int, ret: float, policy_state: dict, h_state: dict,
                   model_state: dict | None = None) -> bool:
        """Keep the evaluated pair (with the model it was certified under) if the evaluation ran the
        current policy certified by the current h and its return is the highest so far; returns
        whether it was kept."""
        if not self.would_keep(ret):
            return False
        self.best = {"epoch": int(epoch), "return": float(ret), "policy": copy.deepcopy(policy_state),
                     "h": copy.deepcopy(h_state)}
        if model_state is not None:
            self.best["model"] = copy.deepcopy(model_state)
        return True

    def would_keep(self, ret: float) -> bool:
        """Whether :meth:`offer_best` would keep a pair evaluated at ``ret`` now."""
        return self.certified and bool(np.isfinite(ret)) and (self.best is None or ret > self.best["return"])

    def delivered(self, final_policy: str, epoch: int) -> tuple[int, dict | None]:
        """What the run delivers: (the epoch of its policy, the best pair to load or None). With
        ``final_policy: last`` or no certified pair kept, the acting policy (the last certified
        one if the last epoch's was not)."""
        if final_policy == "last" or self.best is None:
            return self.acting_epoch(epoch), None
        return self.best["epoch"], self.best

    def to_dict(self) -> dict:
        return {"certified": self.certified, "safe_policy": self.safe_policy,
                "safe_policy_epoch": self.safe_policy_epoch, "best": self.best, "dilation": self.dilation}

    @classmethod
    def from_checkpoint(cls, d: dict, default_dilation: float) -> SafetyState:
        """From a checkpoint's fields (older checkpoints lack some: their defaults)."""
        safe_epoch = d.get("safe_policy_epoch")
        if safe_epoch is None:   # written before safe_policy_epoch existed: the last epoch that passed
            safe_epoch = max([0] + epochs_certified(checkpoint_rows(d) or []))
        return cls(copy.deepcopy(d["safe_policy"]), int(safe_epoch), bool(d["certified"]), d.get("best"),
                   float(d.get("dilation", default_dilation)))


def epochs_certified(rows) -> list[int]:
    """The epochs (0: start-up) whose check certified the triple, from a run's metrics rows. None at
    all means the run never had a certificate: the initial policy acted throughout (safe only by the
    user's assumption about it), nothing was learnt, and h is an uncertified fit."""
    return [int(r["epoch"]) for r in rows if "epoch" in r and r.get("policy_certified") in (True, "True")]
