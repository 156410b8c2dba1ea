"""Co-training (Algorithm 2): the only place that knows the order of the steps.

Start-up (what the paper assumes): safe episodes of the initial policy, an initial model, and a
certificate pre-trained for the initial policy and model (Alg. 1). Then, per epoch
(:meth:`CRABS.run_epoch`):

1. collect data with safeguarded exploration (Alg. 3), every step through the safety monitor;
2. train the calibrated ensemble (Sec. 4.3);
3. train the certificate for the current policy (Alg. 1 with the Sec. 4.2 regulariser), rolling
   back to the previous one if the adversary is not silenced within the budget;
4. optimise the policy with constrained SAC and adversarial steps (Alg. 4), then make sure the
   adversary finds no state the policy is not certified at, or roll the policy back;
5. evaluate the mean policy (real steps: they go through the monitor too) and checkpoint.

With ``barrier.learn: false`` (the paper's handcrafted-h ablation, Sec. 6) step 3 is skipped in
every epoch and at start-up: h is the handcrafted certificate (crabs/handcrafted.py) all run; the
rest, the checks included, is unchanged.

The parts live in their own modules: the episode loop and its actors (rollout.py, explore.py),
Alg. 1 and the checks (certify.py), samples of C_h (states.py), the safety state and its decisions
(safety.py), the run folder, checkpoints and resume (runs.py).
"""

from __future__ import annotations

import copy
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from crabs.barrier import Barrier, CertificateTrainer, fit_certificate
from crabs.buffer import ReplayBuffer
from crabs.certify import Certifier, uniform_violations
from crabs.config import Config, algorithm_of
from crabs.dynamics import DynamicsTrainer, hull_error, model_safe_rollouts, prediction_error
from crabs.envs import read_ledger
from crabs.explore import CheckedActor, GuardedActor, SafeguardedActor, StartupActor
from crabs.handcrafted import HandcraftedBarrier, build_handcrafted
from crabs.mala import Adversary
from crabs.rollout import Step, mean_actor, run_episode
from crabs.runs import Runner
from crabs.sac import ConstrainedSAC
from crabs.safety import EpochPlan, SafetyState, epochs_certified, next_dilation
from crabs.states import certified_samples, uniform, volume_on
from crabs.system import System, make_barrier, make_model

AUDIT_SAMPLES = 20000
"""Uniform states behind the certified volume, the uniform audit and the regrowth's volume test."""


EDGE_PAD_MAX = 0.25
"""The edge pad never takes more than a quarter of a limit: a model that misses by more has not
learnt the system, and the pad would leave little of the safe set."""


class NoCertificateWarning(UserWarning):
    """No (model, h, policy) triple has been certified yet, so the initial policy acts."""


STARTUP_UNCERTIFIED = (
    "start-up did not certify the initial policy (Alg. 1 was not quiet in barrier.pretrain_steps, or "
    "the check after it found a counter-example; with barrier.learn false, the handcrafted h failed the "
    "check). The initial policy acts (no exploration beyond it) and every epoch tries again on more "
    "data. If no epoch certifies, see docs/troubleshooting.md")
# ledger events of a real step outside C_h (or outside the safe set)
LEFT_C_H = ("model_failure", "exit_C_h", "violation")

NEVER_CERTIFIED = (
    "no (model, h, policy) triple was certified in any epoch, start-up included: the initial policy "
    "acted throughout (the run is as safe as the initial policy itself is), nothing was learnt, and the "
    "run's h is an uncertified fit, not a certificate. docs/troubleshooting.md lists the causes and "
    "what to change")


def thin_startup(row: dict) -> str:
    """The no-certificate warning's note on thin start-up data: ``init_noise`` acts only within
    ``init_noise_region`` of the state box's centre, so where s0 lies outside it
    (``startup_s0_noisy`` false) the start-up episodes repeat one deterministic path until they
    enter it (docs/troubleshooting.md)."""
    if row.get("startup_s0_noisy", True):
        return ""
    return (f". s0 lies outside init_noise_region, where the start-up's action noise is off, so the "
            f"start-up episodes repeat one path until they enter it ({row['startup_noisy']:.0%} of the "
            "start-up steps had noise): if the initial policy recovers from a wider region, a larger "
            "init_noise_region widens the data")


@contextmanager
def lap(timer: dict, name: str):
    """Time a phase of the epoch into ``timer["t_<name>"]`` (seconds)."""
    t0 = time.time()
    yield
    timer[f"t_{name}"] = round(time.time() - t0, 2)


class CRABS(Runner):
    """The co-training loop on one system, writing into ``run_dir``."""

    algorithm = "crabs"
    label = "CRABS"
    config_cls = Config
    version = 3
    accepts = (2,)   # version 2: the metrics rows under "log"

    def __init__(self, system: System, cfg: Config, run_dir, progress: bool = True):
        super().__init__(system, cfg, run_dir, progress)
        if not cfg.barrier.learn:   # the ablation of Sec. 6 (its own curve in figure2.png)
            self.label = "CRABS, handcrafted h"
        self.tgen = torch.Generator().manual_seed(cfg.seed + 1)
        self.policy = copy.deepcopy(system.initial_policy).train()
        self.buffer = ReplayBuffer(system.spec.dim, self.policy.act_dim)
        self.model = make_model(system, cfg)
        self.dyn = DynamicsTrainer(self.model, cfg.dynamics)
        self.h = make_barrier(system, cfg)
        self.cert = CertificateTrainer(self.h, cfg.barrier)
        self.sac = ConstrainedSAC(self.policy, cfg.sac, system.reward, system.spec.s0_array())
        self.adv = Adversary(system.state_low, system.state_high, cfg.mala, seed=cfg.seed + 2)
        self.audit_gen = torch.Generator().manual_seed(cfg.seed + 3)
        self.delivery_gen = torch.Generator().manual_seed(cfg.seed + 4)   # its own: other draws unchanged
        self.certifier = Certifier(self.adv, cfg.barrier, self.tgen, self.audited_replay, self.audit_gen)
        self.low = torch.as_tensor(system.state_low, dtype=torch.float32)
        self.high = torch.as_tensor(system.state_high, dtype=torch.float32)
        self.epoch = 0
        self.safety = SafetyState(copy.deepcopy(self.policy.state_dict()), dilation=cfg.barrier.dilation)
        self.last_eval_states: np.ndarray | None = None   # the last evaluation's trajectory (Figure 3)
        # per epoch (0: start-up), h's weights and that epoch's evaluation trajectory: Figure 3 over
        # the epochs (figure3_epochs.png); 20-35 kB an epoch, kept in the checkpoint
        self.c_h_history: list[dict] = []
        self.trained_on = 0   # replay entries before this index were in the model's last training
        self.refuted_on_resume = ""   # why a resume refuted the checkpoint's triple (the next row says)

    # -- the current triple, bound for the certifier --------------------------------------------
    @property
    def certified(self) -> bool:
        return self.safety.certified

    def train_certificate(self, max_steps: int, h_prev: Barrier | None) -> tuple[bool, int]:
        """Alg. 1 for the current model and policy (Reg's states per ``barrier.reg_states``)."""
        pool = self.reference_states(h_prev) if self.cfg.barrier.reg_states != "candidates" else None
        return self.certifier.train_certificate(self.cert, self.model, self.policy, max_steps, h_prev, pool)

    def ensure_policy_certified(self, max_steps: int) -> tuple[bool, int]:
        """Adversarial policy steps until the adversary is quiet (Alg. 4 lines 5-6), anchored on
        replay states with ``sac.adv_anchor`` > 0."""
        sc = self.cfg.sac
        anchor = None
        if sc.adv_anchor > 0:
            def replay_states() -> torch.Tensor:
                return torch.as_tensor(self.buffer.sample(sc.batch, self.rng)["s"], dtype=torch.float32)

            anchor = (sc.adv_anchor, replay_states)
        return self.certifier.hold_policy(self.sac, self.h, self.model, max_steps, sc.adv_coef, anchor)

    def check_certified(self, steps: int) -> bool:
        return self.certifier.check(self.h, self.model, self.policy, steps)

    def audited_replay(self) -> torch.Tensor:
        """The data's states (s and s') for the audit: all of them, or, beyond ``audit_samples``,
        the most recent half of that many and a random half of the rest (where the policy goes now,
        and where it went)."""
        n, d = self.cfg.barrier.audit_samples, self.buffer.all()
        s = torch.cat([d["s"], d["s2"]])
        if len(s) <= n:
            return s
        recent = torch.cat([d["s"][-(n // 4):], d["s2"][-(n // 4):]])
        return torch.cat([recent, s[torch.randint(len(s), (n - len(recent),), generator=self.audit_gen)]])

    # -- samples of the box and of C_h ----------------------------------------------------------
    def box_samples(self, n: int = AUDIT_SAMPLES) -> torch.Tensor:
        return uniform(self.low, self.high, n, self.tgen)

    def certified_samples(self, h: Barrier, n: int = AUDIT_SAMPLES) -> torch.Tensor:
        """Uniform samples of C_h: rejection sampling of n states in its bounding box."""
        return certified_samples(h, self.adv.certified_box(h), n, self.tgen)

    def certified_volume(self, n: int = AUDIT_SAMPLES) -> float:
        """Fraction of the state box certified (h >= 0), by uniform sampling."""
        return volume_on(self.h, self.box_samples(n))

    def reference_states(self, h_prev: Barrier | None) -> torch.Tensor | None:
        """States for Reg's expectation over S (Sec. 4.2) when ``reg_states`` is not the paper's
        "candidates": uniform samples of the previous certified set C_h-hat ("certified"), or the
        replay buffer's states that lie in C_h-hat ("visited": only where there is data)."""
        if h_prev is None:
            return None
        if self.cfg.barrier.reg_states == "visited":
            if not len(self.buffer):
                return None
            d = self.buffer.all()
            s = torch.cat([d["s"], d["s2"]])
            with torch.no_grad():
                s = s[h_prev(s) >= 0]
        else:
            s = self.certified_samples(h_prev)
        return s if len(s) else None

    # -- real episodes --------------------------------------------------------------------------
    def episode(self, env, actor, label: str = "", guarded: bool = False) -> tuple:
        """One real episode, every transition stored. A step whose action was checked (U known) and
        whose real next state lies outside C_h is written to the ledger with U, h, what acted and
        the transition: a *model failure* if the model had put it inside (U <= 0), else an *exit*
        (no certified action was left). With ``guarded`` (a certified triple acting) and
        ``explore.stop_on_exit`` such a state ends the episode: nothing is certified from there.
        Returns (the episode, model failures, exits)."""
        failures, exits = 0, 0
        stop = guarded and self.cfg.explore.stop_on_exit

        def on_step(st: Step) -> bool:
            nonlocal failures, exits
            if np.isfinite(st.s2).all():   # a non-finite state (the monitor's violation) teaches nothing
                self.buffer.add(st.s, st.decision.action, st.r, st.s2, st.cost)
            u = st.decision.U
            if u is None:
                return False
            with torch.no_grad():
                h2 = float(self.h(torch.as_tensor(st.s2, dtype=torch.float32)))
            if h2 >= 0:
                return False
            failures, exits = failures + int(u <= 0), exits + int(u > 0)
            with torch.no_grad():
                h1 = float(self.h(torch.as_tensor(st.s, dtype=torch.float32)))
            env.note("model_failure" if u <= 0 else "exit_C_h", kind=label, U=u,
                     safeguard=bool(st.decision.safeguard), h_next=h2, h_state=h1,
                     state=np.asarray(st.s).tolist(), next_state=np.asarray(st.s2).tolist(),
                     action=np.asarray(st.decision.action).reshape(-1).tolist(), stopped=stop)
            return stop

        return run_episode(env, actor, on_step), failures, exits

    def policy_net(self, state: dict):
        """A policy network holding the weights ``state``."""
        policy = copy.deepcopy(self.policy)
        policy.load_state_dict(state)
        return policy

    def safe_actor(self):
        """What acts while the triple is not certified: the last certified policy, checked against
        h (with ``explore.fallback: lowest_U``, guarded by the initial policy too)."""
        safe = self.policy_net(self.safety.safe_policy)
        if self.cfg.explore.fallback == "lowest_U":
            return GuardedActor([safe, self.sys.initial_policy], self.h, self.model)
        return CheckedActor(safe, self.h, self.model)

    def fallbacks(self) -> list:
        """The safeguard's other candidates (``explore.fallback: lowest_U``): the last certified
        policy and the initial one."""
        if self.cfg.explore.fallback != "lowest_U":
            return []
        return [self.policy_net(self.safety.safe_policy), self.sys.initial_policy]

    def widen_edge(self, fresh: dict, widen: bool = True) -> dict:
        """The edge pad (``barrier.edge_factor``, a departure): C_h must keep each constrained
        coordinate at least ``edge_factor`` times the model's largest miss inside its limit, the miss
        measured on real transitions the model had not been trained on (the evaluation and
        exploration since its last training; at start-up its own training data, an under-estimate).
        A certified action's predicted next states then lie in C_h, and a real next state within that
        miss of them is safe; if it left C_h the episode stops there (``explore.stop_on_exit``). The
        pad never shrinks; when it grows, C_h shrinks and Alg. 1 and the check re-establish R.3
        before the next real step. Capped at ``EDGE_PAD_MAX`` and at half of s0's room. With
        ``widen`` false (a fixed h, ``barrier.learn: false``, after start-up) the miss is only
        reported: the pad, part of h, stays as h was built."""
        f = self.cfg.barrier.edge_factor
        if f <= 0 or len(fresh["s"]) == 0:
            return {}
        spec = self.sys.spec
        idx = spec.constrained_index
        miss = hull_error(self.model, fresh["s"], fresh["a"], fresh["s2"])[idx].double().numpy()
        room = (1.0 - spec.margin - np.abs(spec.s0_array()[idx]) / spec.constrained_max) / 2
        pad = np.minimum(f * miss / spec.constrained_max, np.minimum(EDGE_PAD_MAX, room))
        if widen and self.h.widen_pad(torch.as_tensor(pad, dtype=torch.float32)):
            self.adv.invalidate()
        return {"edge_miss": float((miss / spec.constrained_max).max()), "edge_pad": float(self.h.pad.max())}

    def collect(self) -> dict:
        """Alg. 2 line 3: the epoch's exploration episodes, with Alg. 3 while the triple is certified
        (else the last certified policy acts). An episode that left C_h (an exit or a model
        failure) ends the phase (``explore.stop_on_exit``)."""
        ec = self.cfg.explore
        plan = ([("uniform", 1.0)] * ec.uniform_episodes + [("policy", 1.0)] * ec.episodes_per_epoch
                + [("policy", 2.0)] * ec.noisy_episodes)
        explore_ok = self.certified
        min_std = ec.min_std if self.epoch + 1 >= ec.min_std_from_epoch else 0.0
        fallback = None if explore_ok else self.safe_actor()
        others = self.fallbacks() if explore_ok else []
        n0 = len(self.buffer)
        eps, failures, exits = [], 0, 0
        env = self.env("explore")
        try:
            for kind, scale in plan:
                if explore_ok:
                    actor = SafeguardedActor(self.policy, self.h, self.model, ec, kind, scale, min_std,
                                             self.tgen, others)
                    label = "uniform" if kind == "uniform" else f"policy, noise x{scale:g}"
                else:
                    actor, label = fallback, "last certified policy"
                ep, fails, out = self.episode(env, actor, label, guarded=explore_ok)
                eps.append(ep)
                failures, exits = failures + fails, exits + out
                if (out or fails) and explore_ok and ec.stop_on_exit:   # left C_h: nothing is
                    break                                                # certified from there
        finally:
            env.close()
        new = self.buffer.index(np.arange(n0, len(self.buffer)))
        err = prediction_error(self.model, new["s"], new["a"], new["s2"])
        edge = self.widen_edge(self.buffer.index(np.arange(min(self.trained_on, n0), len(self.buffer))),
                               widen=self.cfg.barrier.learn)
        steps = sum(e.length for e in eps)
        return {**edge, "explore_return": float(np.mean([e.ret for e in eps])),
                "safeguard_rate": sum(e.safeguards for e in eps) / max(steps, 1),
                "model_failures": failures, "exits_C_h": exits, "explore_episodes": len(eps),
                "model_rmse": err["rmse"], "model_outside": err["outside_box"]}

    def evaluate(self) -> dict:
        """One episode of the acting policy's mean action from s0 (real steps: counted), guarded
        like exploration (``explore.guard_eval``)."""
        if not self.cfg.explore.guard_eval:
            act = mean_actor(self.policy if self.certified else self.policy_net(self.safety.safe_policy))
        elif self.certified:
            act = GuardedActor([self.policy, *self.fallbacks()], self.h, self.model)
        else:
            act = self.safe_actor()
        env = self.env("eval")
        try:
            ep, fails, exits = self.episode(env, act, "eval", guarded=self.certified)
        finally:
            env.close()
        self.last_eval_states = ep.states
        with torch.no_grad():  # where the evaluated policy ends up, and how close to C_h's edge
            hv = self.h(torch.as_tensor(ep.states, dtype=torch.float32))
        return {"eval_return": ep.ret, "eval_length": ep.length, "eval_guarded": ep.safeguards,
                "eval_model_failures": fails, "eval_exits_C_h": exits,
                "eval_end_h": float(hv[-1]), "eval_min_h": float(hv.min()),
                "eval_end_state": " ".join(f"{x:.4g}" for x in ep.states[-1])}

    # -- start-up -------------------------------------------------------------------------------
    def startup(self) -> dict:
        """Initial data (the initial policy with small noise), initial model, initial certificate
        (with ``barrier.learn: false`` the handcrafted h, which must certify the initial policy as
        it is: the check, no Alg. 1)."""
        cfg = self.cfg
        actor = StartupActor(self.policy, self.sys.state_low, self.sys.state_high, cfg.init_noise,
                             cfg.init_noise_region, self.rng)
        env = self.env("startup")
        try:
            eps = [self.episode(env, actor)[0] for _ in range(cfg.init_episodes)]
        finally:
            env.close()
        data = self.buffer.all()
        self.model.fit_normalizers(data["s"], data["a"], data["s2"])
        self.dyn.train(self.buffer, cfg.dynamics.init_steps, self.rng)
        self.trained_on = len(self.buffer)
        self.refresh_support()
        edge = self.widen_edge(data)
        info = {**edge, **self.init_certificate()}
        if cfg.barrier.learn:
            # the paper's pre-training has no reference certificate; with reg_states other than
            # "candidates" the fitted one is kept as the reference set, so Alg. 1 carves it rather
            # than redraws it
            ref = self.cert.snapshot() if cfg.barrier.reg_states != "candidates" else None
            found, steps = self.train_certificate(cfg.barrier.pretrain_steps, h_prev=ref)
            self.safety.certified = found and self.check_certified(cfg.barrier.quiet_steps)
            info.update(cert_found=found, cert_steps=steps)
        else:   # Alg. 2 without line 5: no Alg. 1, the check alone decides
            self.safety.certified = self.check_certified(cfg.barrier.quiet_steps)
        info["policy_certified"] = self.certified   # the start-up's check (before any refutation)
        vol = self.certified_volume()
        return {"startup_return": float(np.mean([e.ret for e in eps])),
                "startup_noisy": actor.noisy / max(sum(e.length for e in eps), 1),
                "startup_s0_noisy": actor.inside(self.sys.spec.s0_array()),
                "certified_volume": vol, "uniform_violations": self.epoch_audit(info),
                **info}

    def refresh_support(self) -> None:
        """Tell the model which states it was trained on (used with ``dynamics.support_radius``)."""
        if self.cfg.dynamics.support_radius > 0 and len(self.buffer):
            self.model.set_support(self.buffer.all()["s"], self.adv.precond, gen=self.tgen)

    def init_certificate(self) -> dict:
        """Initial certificate for the initial policy and model (the paper assumes one, App. C):
        with ``barrier.init = "rollout"``, h is first fitted to the states whose model rollouts
        under the policy stay safe for every ensemble member; Alg. 1 then makes it invariant. With
        ``"handcrafted"``, see :meth:`handcraft`."""
        bc = self.cfg.barrier
        if bc.init == "none":
            return {}
        if bc.init == "handcrafted":
            return self.handcraft()
        if bc.init != "rollout":
            raise ValueError(f"barrier.init must be 'rollout', 'none' or 'handcrafted', got {bc.init!r}")
        return self.fit_to_rollouts(bc.init_fit_steps, regrow=False)

    def handcraft(self) -> dict:
        """``barrier.init = "handcrafted"``: a level set of the initial policy's quadratic Lyapunov
        function under the start-up model, cut by B_safe (crabs/handcrafted.py; the level rule uses
        ``init_samples`` states per level, ``eps`` and ``train_margin``). With ``barrier.learn:
        false`` (the paper's ablation) that is h for the whole run; otherwise it only starts h: f is
        fitted to its C_h (hinge loss, ``init_fit_steps``, as for "rollout") and Alg. 1 goes on."""
        bc, sys = self.cfg.barrier, self.sys
        fixed = isinstance(self.h, HandcraftedBarrier)
        hand = self.h if fixed else HandcraftedBarrier.for_box(sys.spec, bc, sys.state_low, sys.state_high)
        if not fixed:
            hand.pad.copy_(self.h.pad)
        info = build_handcrafted(hand, self.model, self.policy, bc.init_samples, bc.eps, bc.train_margin,
                                 self.tgen)
        if not fixed:
            s = torch.cat([self.box_samples(bc.init_samples), self.buffer.all()["s"]])
            with torch.no_grad():
                pos = hand(s) >= 0
            info.update(init_positive=float(pos.float().mean()),
                        **fit_certificate(self.h, s, pos, bc.init_fit_steps, gen=self.tgen))
        self.adv.invalidate()
        return info

    def fit_to_rollouts(self, steps: int, regrow: bool) -> dict:
        """Fit h to the states whose model rollouts under the current policy stay safe for every
        ensemble member (states drawn uniformly from the box, plus the data).

        With ``regrow``: the target set is the current C_h united with the states near the data
        (within ``regrow_radius`` box half-widths) whose rollouts under the policy plus one of the
        constant action offsets stay safe; only those near-data candidates outside C_h are rolled
        out (uniform states keep their current label), which keeps the step cheap."""
        bc = self.cfg.barrier
        lo, hi = self.low, self.high
        half = (hi - lo) / 2
        data = self.buffer.all()["s"]
        s = self.box_samples(bc.init_samples)
        if not regrow:
            s = torch.cat([s, data])
            pos = model_safe_rollouts(self.model, self.policy, self.sys.spec, s, bc.init_rollout_steps)
        else:
            # candidates near the data: data points moved by up to regrow_radius half-widths
            idx = torch.randint(len(data), (bc.regrow_samples,), generator=self.tgen)
            step = (2 * torch.rand(bc.regrow_samples, len(lo), generator=self.tgen) - 1) * half
            near = data[idx] + bc.regrow_radius * step
            near = near[((near >= lo) & (near <= hi)).all(-1)]
            s = torch.cat([s, data, near])
            with torch.no_grad():
                pos = self.h(s) >= 0
            cand = torch.cat([torch.zeros(len(s) - len(near), dtype=torch.bool),
                              torch.ones(len(near), dtype=torch.bool)]) & ~pos
            todo = s[cand]
            grown = torch.zeros(len(todo), dtype=torch.bool)
            for off in bc.regrow_offsets:
                rest = ~grown
                if not rest.any():
                    break
                grown[rest] = model_safe_rollouts(self.model, self.policy, self.sys.spec, todo[rest],
                                                  bc.init_rollout_steps, off)
            pos[cand] = grown
        info = fit_certificate(self.h, s, pos, steps, gen=self.tgen)
        self.adv.invalidate()
        return {"init_positive": float(pos.float().mean()), **info}

    # -- one epoch of Algorithm 2 ---------------------------------------------------------------
    def train_model(self) -> None:
        """Alg. 2 line 4: the ensemble on all data so far (warm-started)."""
        if self.cfg.dynamics.refit_normalizers:  # predictions unchanged, the scales follow the data
            data = self.buffer.all()
            self.model.refit_normalizers(data["s"], data["a"], data["s2"])
        self.dyn.train(self.buffer, self.cfg.dynamics.steps_per_epoch, self.rng)
        self.trained_on = len(self.buffer)
        self.refresh_support()
        self.adv.invalidate()

    def restore(self, cert_state: dict | None = None, sac_state: dict | None = None) -> None:
        """Load saved states of h (with its optimiser) and of the policy (with SAC); the adversary's
        chains are then re-evaluated."""
        if cert_state is not None:
            self.cert.load_state_dict(cert_state)
        if sac_state is not None:
            self.sac.load_state_dict(sac_state)
        self.adv.invalidate()

    def update_certificate(self, plan: EpochPlan, row: dict) -> tuple[Barrier, dict]:
        """Alg. 2 line 5: (regrow C_h and let the policy hold it, then) Alg. 1 from h-hat, the
        certificate the epoch started with, or back to h-hat if Alg. 1 is not quiet. Returns h-hat
        and the policy (with SAC's state) that the certificate now in force belongs to."""
        bc = self.cfg.barrier
        if plan.carry:  # carve h further for the policy that acts meanwhile, training restarts from it
            self.policy.load_state_dict(self.safety.safe_policy)
            self.adv.invalidate()
        h_prev = self.cert.snapshot()
        cert_start = copy.deepcopy(self.cert.state_dict())  # h and its optimiser, for a rollback
        pi_start = copy.deepcopy(self.sac.state_dict())     # the policy h_prev was certified for
        if plan.judge:  # fixed uniform states on which the regrown C_h must beat C_h-hat
            judge = self.box_samples()
            vol_prev = volume_on(h_prev, judge)
        if plan.regrow:
            if plan.dilate:
                self.h.dilate(self.safety.dilation)
                self.adv.invalidate()
                row["dilation"] = self.safety.dilation
            else:
                self.fit_to_rollouts(bc.regrow_fit_steps, regrow=True)
            # let the policy learn to hold the grown set before Alg. 1 carves back the rest
            self.ensure_policy_certified(bc.regrow_policy_steps)
        found, steps = self.train_certificate(bc.max_steps, h_prev)
        if found and plan.judge:
            vol = volume_on(self.h, judge)
            row.update(regrow_volume=vol, prev_volume=vol_prev)
            if vol < vol_prev:  # the regrowth lost more than it added: Alg. 1 from h-hat and pi_start
                grown = (copy.deepcopy(self.cert.state_dict()), copy.deepcopy(self.sac.state_dict()))
                self.restore(cert_start, pi_start)
                again, steps2 = self.train_certificate(bc.max_steps, h_prev)
                steps += steps2
                undone = again and volume_on(self.h, judge) > vol
                if not undone:  # the regrown certificate (certified) is still the larger one
                    self.restore(*grown)
                row["regrowth_undone"] = undone
        if plan.dilate:
            self.safety.dilation = next_dilation(self.safety.dilation, found)
        if not plan.keep_certificate(found):  # roll back (facts sheet): the policy must then satisfy
            self.restore(cert_start)          # the old certificate; h and Adam's moments as they were
        row.update(cert_found=found, cert_steps=steps)
        return h_prev, (copy.deepcopy(self.sac.state_dict()) if found else pi_start)

    def optimise_policy(self) -> dict:
        """Alg. 2 line 6: constrained SAC (Alg. 4) with an adversarial policy step every
        ``adv_every`` SAC steps."""
        sc = self.cfg.sac
        infos = []
        for i in range(sc.steps_per_epoch):
            batch = self.buffer.sample(sc.batch, self.rng)
            infos.append(self.sac.update(batch, self.h, self.model))
            self.adv.invalidate()
            if sc.adv_every and (i + 1) % sc.adv_every == 0:
                self.adv.step(self.h, self.model, self.policy)
                w = self.adv.violators(self.cfg.barrier.eps)
                if len(w):
                    self.sac.adversarial_step(w, self.h, self.model, sc.adv_coef)
        last = infos[-1] if infos else {}
        return {k: last[k] for k in ("q_loss", "alpha", "certified_frac")} if last else {}

    def check_policy(self, h_prev: Barrier, pi_prev: dict) -> dict:
        """Alg. 4 lines 5-6 until the adversary is quiet; else the policy rolls back to the one the
        certificate belongs to, which must pass the check under the new model (with ``on_stuck:
        carry``, failing that, h is carved for it, unless h is fixed: ``barrier.learn: false``). The
        outcome decides which policy acts next."""
        bc = self.cfg.barrier
        ok, steps = self.ensure_policy_certified(bc.max_steps)
        if not ok:
            self.restore(sac_state=pi_prev)
            ok = self.check_certified(bc.quiet_steps)
            if not ok and bc.on_stuck == "carry" and bc.learn:
                ok, _ = self.train_certificate(bc.max_steps, h_prev)
        self.safety.after_check(ok, self.policy.state_dict(), self.epoch + 1)
        return {"policy_certified": ok, "policy_cert_steps": steps}

    def run_epoch(self) -> dict:
        """One epoch of Algorithm 2."""
        row: dict = {"epoch": self.epoch + 1}
        if self.refuted_on_resume:
            row["refuted"], self.refuted_on_resume = self.refuted_on_resume, ""
        timer: dict = {}
        start, catches = time.time(), self.certifier.catches
        with lap(timer, "collect"):
            row.update(self.collect())                                   # line 3: Alg. 3
        with lap(timer, "model"):
            self.train_model()                                           # line 4
        with lap(timer, "certificate"):
            if self.cfg.barrier.learn:
                plan = EpochPlan.decide(self.cfg.barrier, self.certified)
                h_prev, pi_prev = self.update_certificate(plan, row)     # line 5: Alg. 1
            else:   # barrier.learn false: no line 5, h stays the handcrafted one
                h_prev, pi_prev = self.h, copy.deepcopy(self.sac.state_dict())
        with lap(timer, "policy"):
            row.update(self.optimise_policy())                           # line 6: Alg. 4
        with lap(timer, "verify"):
            row.update(self.check_policy(h_prev, pi_prev))
        with lap(timer, "eval"):
            if self.cfg.eval_every and (self.epoch + 1) % self.cfg.eval_every == 0:
                row.update(self.evaluate())
                self.refute_on_exit(row)
                row.update(self.keep_if_best(self.epoch + 1, row["eval_return"]))
            row.update(certified_volume=self.certified_volume(), uniform_violations=self.epoch_audit(row),
                       env_steps=self.counters.env_steps, episodes=self.counters.episodes,
                       violations=self.counters.violations)
        # audits that found a counter-example the quiet adversary had missed
        row.update(audit_catches=self.certifier.catches - catches)
        row.update(timer, epoch_s=round(time.time() - start, 2))
        self.epoch += 1
        return row

    # -- what the run delivers ------------------------------------------------------------------
    def summary(self, started: float, **fields) -> dict:
        """The harness's summary, its algorithm "crabs_handcrafted" for ``barrier.learn: false``
        (``crabs compare`` groups runs by it)."""
        return {**super().summary(started, **fields), "algorithm": algorithm_of(self.cfg.to_dict())}

    def keep_if_best(self, epoch: int, ret: float) -> dict:
        """Remember the evaluated (policy, h) pair if it is certified, the best so far and passes the
        delivery audit (``barrier.delivery_audit``); returns the audit's outcome for metrics.csv
        (``delivery_counter_examples``, when there was one)."""
        n = self.cfg.barrier.delivery_audit
        if not self.safety.would_keep(ret):
            return {}
        info = {}
        if n > 0:
            found = self.certifier.delivery_audit(self.h, self.model, self.policy, n, self.sys.spec.horizon,
                                                  self.delivery_gen)
            info["delivery_counter_examples"] = len(found)
            if len(found):   # remembered by the certifier; the triple is refuted
                self.refute(info, "delivery_audit")
                return info
        self.safety.offer_best(epoch, ret, self.policy.state_dict(), self.h.state_dict(),
                               self.model.state_dict())
        return info

    def refute(self, row: dict, why: str) -> None:
        """Evidence against the certified triple after its check (``SafetyState.refute``): nothing
        explores, and its policy acts only through the guard, until the triple is re-trained and a
        new check passes. ``refuted`` in metrics.csv names the evidence."""
        if self.safety.refute():
            row["refuted"] = why

    def refute_on_exit(self, row: dict) -> None:
        """An evaluation that left C_h under a certified triple (``explore.stop_on_exit``): the model
        had put a real next state inside C_h (a model failure) or no certified action was left, so
        the next real step is not taken with that triple before the model has learnt the transition
        and the triple has passed a new check."""
        if self.cfg.explore.stop_on_exit and (row["eval_model_failures"] or row["eval_exits_C_h"]):
            self.refute(row, "evaluation left C_h")

    def epoch_audit(self, row: dict) -> float:
        """The epoch's ``uniform_violations``: among uniform states of C_h, the fraction with U > 0
        under the model. With ``barrier.audit``, a certified triple for which it finds any is
        refuted (its finds remembered, as every audit's), so the next real steps do not explore."""
        samples = self.certified_samples(self.h)
        if not (self.cfg.barrier.audit and self.certified):
            return uniform_violations(self.h, self.model, self.policy, samples)
        found = self.certifier.counter_examples(self.h, self.model, self.policy, samples, margin=0.0)
        if len(found):
            self.certifier.remember(found)
            self.refute(row, "epoch audit")
        return len(found) / len(samples) if len(samples) else 0.0

    def adopt_final_policy(self) -> int:
        """With ``final_policy: best``, load the best certified pair and the model it was certified
        under (for the final evaluation, policy.pt and the plots; last.pt keeps the training state).
        Returns the epoch whose policy is delivered."""
        epoch, best = self.safety.delivered(self.cfg.final_policy, self.epoch)
        if best is not None:   # the pair, with the model it was certified under
            self.policy.load_state_dict(best["policy"])
            self.h.load_state_dict(best["h"])
            if "model" in best:
                self.model.load_state_dict(best["model"])
            self.safety.certified = True
            self.adv.invalidate()
        return epoch

    def delivered_policy(self, epoch: int | None = None) -> tuple:
        """policy.pt: the policy that acts (the last certified one while the current policy is not
        certified), with the epoch it is from (``epoch``, by default the acting policy's)."""
        state = self.policy.state_dict() if self.certified else self.safety.safe_policy
        epoch = self.safety.acting_epoch(self.epoch) if epoch is None else epoch
        return self.policy, state, {"task": self.sys.name, "epoch": int(epoch)}

    # -- checkpoints ----------------------------------------------------------------------------
    def record_c_h(self, row: dict) -> None:
        """This epoch's h and, if the epoch evaluated (``row``), its evaluation trajectory, for
        Figure 3 over the epochs."""
        traj = self.last_eval_states if "eval_return" in row else None
        self.c_h_history.append({"epoch": int(self.epoch), "h": copy.deepcopy(self.h.state_dict()),
                                 "trajectory": None if traj is None
                                 else torch.as_tensor(np.asarray(traj), dtype=torch.float32)})

    def generators(self) -> dict[str, torch.Generator]:
        return {"tgen": self.tgen, "adv": self.adv.gen, "audit": self.audit_gen,
                "delivery": self.delivery_gen}

    def extra_state(self) -> dict:
        return {"epoch": self.epoch, **self.safety.to_dict(), "model": self.dyn.state_dict(),
                "barrier": self.cert.state_dict(), "sac": self.sac.state_dict(),
                "buffer": self.buffer.state_dict(), "trained_on": self.trained_on,
                "c_h_history": self.c_h_history, "audit_memory": self.certifier.memory}

    def load_extra_state(self, d: dict) -> None:
        self.epoch = d["epoch"]
        self.safety = SafetyState.from_checkpoint(d, self.cfg.barrier.dilation)
        self.dyn.load_state_dict(d["model"])
        self.cert.load_state_dict(d["barrier"])
        self.sac.load_state_dict(d["sac"])
        self.buffer.load_state_dict(d["buffer"])
        self.trained_on = int(d.get("trained_on", len(self.buffer)))
        self.c_h_history = list(d.get("c_h_history", []))   # absent from older checkpoints
        if "audit_memory" in d:                              # absent before barrier.audit_memory
            self.certifier.memory = d["audit_memory"]
        self.refresh_support()
        self.adv.state = None

    def resume(self) -> bool:
        """The harness's resume; and if the ledger shows a real state outside C_h (a model failure,
        an exit) or a violation after the checkpoint, the steps of an epoch that died before its
        checkpoint, the checkpoint's triple is refuted: what it learnt from them is lost with the
        epoch, so it does not explore again before a new check (``refuted`` in the next row)."""
        resumed = super().resume()
        if resumed and self.rows:
            since = int(self.rows[-1].get("env_steps", 0))
            left = [r for r in read_ledger(self.folder.ledger)
                    if r.get("event") in LEFT_C_H and int(r.get("env_steps", 0)) > since]
            if left and self.safety.refute():
                self.refuted_on_resume = (f"resume: {len(left)} real step(s) left C_h after the "
                                          "checkpoint")
        return resumed

    # -- the whole run --------------------------------------------------------------------------
    def make_plots(self) -> None:
        from crabs.plots import figure3, figure3_epochs

        self.plot_progress(title=self.sys.name)
        kernel = None
        if self.sys.name in ("upright", "tilt"):
            from crabs.oracle import viability_kernel

            kernel = viability_kernel()
        figure3(self.h, self.sys.spec, self.sys.state_low, self.sys.state_high, self.last_eval_states,
                self.dir / "figure3.png", title=f"{self.sys.name}: C_h after {self.epoch} epochs",
                kernel=kernel)
        if self.c_h_history:
            figure3_epochs(self.h, self.c_h_history, self.sys.spec, self.sys.state_low, self.sys.state_high,
                           self.dir / "figure3_epochs.png", title=f"{self.sys.name}: C_h over the epochs",
                           kernel=kernel)

    @classmethod
    def default_config(cls, system) -> Config:
        """The task's default config (crabs/configs/<task>.yaml); for a System, ``Config()``."""
        from crabs.config import load_config

        return load_config(task=system if isinstance(system, str) else None)

    @classmethod
    def finished(cls, done: dict, cfg: Config) -> str | None:
        # a finished run has nothing left to do (and a final evaluation would take real steps)
        if done["epochs"] >= cfg.epochs:
            return f"finished its {cfg.epochs} epochs: nothing to do (pass epochs to extend it)"
        return None

    def run(self) -> dict:
        """Start up (or resume) and run the epochs; then deliver, evaluate and summarise."""
        started = time.time()
        if not self.resume():   # a new run, or one that died during start-up (its steps still count)
            info = self.startup()
            checked = info.pop("policy_certified")   # the start-up's check, before any refutation
            row = {"epoch": 0, **info, **self.evaluate(), "policy_certified": checked,
                   "env_steps": self.counters.env_steps,
                   "episodes": self.counters.episodes, "violations": self.counters.violations,
                   "epoch_s": round(time.time() - started, 2)}
            self.refute_on_exit(row)
            row.update(self.keep_if_best(0, row["eval_return"]))
            self.rows.append(row)
            self.record_c_h(row)
            self.write_metrics()
            self.save()
            if not self.certified:   # stacklevel 4: run <- Runner.train <- train <- the caller
                warnings.warn(f"{self.dir}: {STARTUP_UNCERTIFIED}{thin_startup(info)}",
                              NoCertificateWarning, stacklevel=4)
        bar = self.progress_bar(self.cfg.epochs, self.epoch, "epoch")
        while self.epoch < self.cfg.epochs:
            row = self.run_epoch()
            self.rows.append(row)
            self.record_c_h(row)
            self.write_metrics()
            if self.cfg.checkpoint_every and self.epoch % self.cfg.checkpoint_every == 0:
                self.save()
            bar.update(1)
            bar.set_postfix(violations=self.counters.violations,
                            ret=f"{row.get('eval_return', float('nan')):.3g}",
                            vol=f"{row['certified_volume']:.3f}", steps=self.counters.env_steps)
        bar.close()
        self.save()
        last_return = next((r["eval_return"] for r in reversed(self.rows) if "eval_return" in r), None)
        last_certified = self.certified  # before the best pair, if delivered, is loaded
        policy_epoch = self.adopt_final_policy()
        self.save_policy(epoch=policy_epoch)
        final = self.evaluate()
        self.write_metrics()
        # every real step outside C_h, from the ledger: an epoch that died before its checkpoint (its
        # metrics row lost with it) still counts (the rows alone would forget it)
        left = [r["event"] for r in read_ledger(self.folder.ledger) if r.get("event") in LEFT_C_H]
        return self.summary(
            started, final_eval_return=final["eval_return"],
            # the delivered policy (final_policy): its epoch, and the last epoch's evaluation
            final_policy=self.cfg.final_policy, final_policy_epoch=policy_epoch,
            last_epoch_eval_return=last_return,
            # where the final evaluation ended and h there (h well above 0: the policy, not the
            # certificate, limits the return), as the eval_* columns of metrics.csv
            final_eval_end_state=[float(x) for x in self.last_eval_states[-1]],
            final_eval_end_h=final["eval_end_h"], final_eval_min_h=final["eval_min_h"],
            mean_return=float(np.mean([r["eval_return"] for r in self.rows if "eval_return" in r])),
            certified_volume=self.certified_volume(), epochs=self.epoch,
            # real steps (exploration and evaluation) whose action had U <= 0 (every ensemble member
            # put s' in C_h) and whose real s' fell outside C_h: a broken link of the guarantee
            # (model calibration) even when no violation follows; and steps that left C_h with no
            # certified action left (U > 0)
            model_failures=left.count("model_failure"), exits_C_h=left.count("exit_C_h"),
            certified=last_certified,
            # epochs (start-up included) whose triple was certified; 0: the run never had a
            # certificate (the initial policy acted throughout, h is an uncertified fit)
            certified_epochs=len(epochs_certified(self.rows)))


# -- the public entry point -------------------------------------------------------------------
def train(system: str | System | None, config: Config | None = None, out: str | Path = "runs/crabs",
          resume: bool = False, progress: bool = True, epochs: int | None = None) -> dict:
    """Run CRABS (Algorithm 2) on a built-in task name or a :class:`System`, writing the run folder
    ``out`` (config, ledger, metrics, checkpoints, summary.json, plots). With ``resume=True`` the
    run continues from ``out``'s last checkpoint with ``out``'s own config and counters (``system``
    may then be None for a built-in task, and ``epochs`` raises the run's epoch budget); a run
    that died during start-up starts up again, its earlier steps and violations still counted; a
    finished run returns its summary without touching the environment."""
    summary = CRABS.train(system, config, out, resume, progress,
                          changes={"epochs": epochs} if resume and epochs is not None else None)
    if summary.get("certified_epochs") == 0:   # after summary.json is written: a warning turned
        warnings.warn(f"{out}: {NEVER_CERTIFIED}", NoCertificateWarning, stacklevel=2)   # error loses nothing
    return summary
