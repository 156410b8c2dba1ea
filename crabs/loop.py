"""Co-training (Algorithm 2): the only place that knows the order of the steps.

Start-up (what the paper assumes): safe episodes of the initial policy, an initial model, and a
certificate pre-trained for the initial policy and model (Alg. 1). Then, per epoch:

1. collect data with safeguarded exploration (Alg. 3), every step through the safety monitor;
2. train the calibrated ensemble (Sec. 4.3);
3. train the certificate for the current policy (Alg. 1 with the Sec. 4.2 regulariser), rolling
   back to the previous one if the adversary is not silenced within the budget;
4. optimise the policy with constrained SAC and adversarial steps (Alg. 4), then make sure the
   adversary finds no state the policy is not certified at, or roll the policy back;
5. evaluate the mean policy (real steps: they go through the monitor too) and checkpoint.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crabs.barrier import Barrier, CertificateTrainer, U, fit_certificate
from crabs.buffer import ReplayBuffer
from crabs.config import Config
from crabs.dynamics import DynamicsTrainer, Ensemble, model_safe_rollouts, prediction_error
from crabs.envs import MonitorCounters, SafetyMonitor
from crabs.explore import safeguarded_action
from crabs.mala import Adversary
from crabs.runs import recount, rng_state, set_rng_state, write_csv
from crabs.sac import ConstrainedSAC
from crabs.system import System

CKPT_VERSION = 2


@dataclass
class EpochLog:
    rows: list[dict] = field(default_factory=list)


class CRABS:
    """The co-training loop on one system, writing into ``run_dir``."""

    def __init__(self, system: System, cfg: Config, run_dir: str | Path, progress: bool = True):
        self.sys, self.cfg = system, cfg
        self.dir = Path(run_dir)
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.tgen = torch.Generator().manual_seed(cfg.seed + 1)
        spec = system.spec
        self.policy = copy.deepcopy(system.initial_policy).train()
        obs_dim, act_dim = spec.dim, self.policy.act_dim
        self.buffer = ReplayBuffer(obs_dim, act_dim)
        self.model = Ensemble(obs_dim, act_dim, cfg.dynamics)
        if cfg.dynamics.saturate_actions:
            self.model.action_bound = system.action_bound
        self.dyn = DynamicsTrainer(self.model, cfg.dynamics)
        scale = torch.as_tensor((system.state_high - system.state_low) / 2, dtype=torch.float32)
        self.h = Barrier(spec, cfg.barrier, scale, system.state_low, system.state_high)
        self.cert = CertificateTrainer(self.h, cfg.barrier)
        self.sac = ConstrainedSAC(self.policy, cfg.sac, system.reward)
        self.adv = Adversary(system.state_low, system.state_high, cfg.mala, seed=cfg.seed + 2)
        self.epoch = 0
        self.dilation = cfg.barrier.dilation  # adapted per epoch with regrow_mode = "dilate"
        self.counters = MonitorCounters()
        self.log = EpochLog()
        self.started_epochs = False
        self.certified = False
        # the last policy that was certified (initially the given safe policy): what acts whenever
        # the current (policy, certificate, model) triple could not be certified
        self.safe_policy_state = copy.deepcopy(self.policy.state_dict())
        self.safe_policy_epoch = 0  # the epoch whose policy that is (0: the initial policy)
        self._safe_policy = None  # a policy network holding safe_policy_state, built on demand
        # the certified (policy, h) pair with the highest evaluation return so far, what the run
        # delivers with final_policy "best": {"epoch", "return", "policy", "h"}
        self.best: dict | None = None
        self._rows_at_start = 0

    # -- environment ------------------------------------------------------------------------
    def _env(self, tag: str) -> SafetyMonitor:
        return SafetyMonitor(self.sys.make_env(), self.sys.spec, ledger=self.dir / "ledger.jsonl",
                             counters=self.counters, tag=tag)

    def _episode(self, env: SafetyMonitor, choose, add: bool = True, label: str = "") -> dict:
        s, _ = env.reset()
        ret, n_guard, n, fails, states = 0.0, 0, 0, 0, [s]
        while True:
            a, guard, u = choose(s)  # u: U(s, a, h) under the model, None if not checked
            s2, r, term, trunc, info = env.step(a)
            if add:
                self.buffer.add(s, a, r, s2, float(info["cost"] > 0))
            if u is not None and u <= 0:
                with torch.no_grad():
                    h2 = float(self.h(torch.as_tensor(s2, dtype=torch.float32)))
                    if h2 < 0:  # a model failure: predicted in C_h, really outside
                        fails += 1
                        env.note("model_failure", kind=label, U=u, safeguard=bool(guard), h_next=h2,
                                 h_state=float(self.h(torch.as_tensor(s, dtype=torch.float32))),
                                 state=np.asarray(s).tolist(), action=np.asarray(a).reshape(-1).tolist(),
                                 next_state=np.asarray(s2).tolist())
            ret += float(r)
            n += 1
            n_guard += int(guard)
            states.append(s2)
            s = s2
            if term or trunc:
                break
        return {"return": ret, "length": n, "safeguard": n_guard, "model_failures": fails,
                "states": np.asarray(states)}

    def set_safe_policy(self, state: dict, epoch: int) -> None:
        """Record the last certified policy (what acts whenever the triple is not certified) and the
        epoch it is from."""
        self.safe_policy_state = copy.deepcopy(state)
        self.safe_policy_epoch = int(epoch)
        self._safe_policy = None

    def acting_policy_epoch(self) -> int:
        """The epoch of the policy that acts now: the current one if certified, else the last
        certified one."""
        return self.epoch if self.certified else self.safe_policy_epoch

    def _safe_act(self, s):
        if self._safe_policy is None:
            self._safe_policy = copy.deepcopy(self.policy)
            self._safe_policy.load_state_dict(self.safe_policy_state)
        with torch.no_grad():
            a = self._safe_policy.mean_action(torch.as_tensor(s, dtype=torch.float32))
        return a.double().numpy()

    def _mean_act(self, s):
        with torch.no_grad():
            return self.policy.mean_action(torch.as_tensor(s, dtype=torch.float32)).double().numpy()

    # -- start-up ---------------------------------------------------------------------------
    def startup(self) -> dict:
        """Initial data (the initial policy with small noise), initial model, initial certificate."""
        cfg = self.cfg
        env = self._env("startup")
        try:
            eps = [self._episode(env, self.startup_action) for _ in range(cfg.init_episodes)]
        finally:
            env.close()
        data = self.buffer.all()
        self.model.fit_normalizers(data["s"], data["a"], data["s2"])
        self.dyn.train(self.buffer, cfg.dynamics.init_steps, self.rng)
        self.refresh_support()
        info = self.init_certificate()
        # the paper's pre-training has no reference certificate; with reg_states other than
        # "candidates" the fitted one is kept as the reference set, so Alg. 1 carves it rather than
        # redraws it
        ref = self.cert.snapshot() if cfg.barrier.reg_states != "candidates" else None
        found, steps = self.train_certificate(cfg.barrier.pretrain_steps, h_prev=ref)
        self.certified = found and self.check_certified(self.cfg.barrier.quiet_steps)
        return {"startup_return": float(np.mean([e["return"] for e in eps])),
                "cert_found": found, "cert_steps": steps, "certified_volume": self.certified_volume(),
                "uniform_violations": self.uniform_violations(),
                **info}

    def refresh_support(self) -> None:
        """Tell the model which states it was trained on (used with ``dynamics.support_radius``)."""
        if self.cfg.dynamics.support_radius > 0 and len(self.buffer):
            self.model.set_support(self.buffer.all()["s"], self.adv.precond, gen=self.tgen)

    def startup_action(self, s: np.ndarray):
        """Start-up data: no model or certificate exists yet, so the given safe policy is the only
        safeguard; noise is added only inside a small region (``init_noise_region`` of the state
        box) from which that policy recovers (checked for the shipped policies by the tests)."""
        cfg = self.cfg
        a = self._mean_act(s)
        half = (self.sys.state_high - self.sys.state_low) / 2
        center = (self.sys.state_high + self.sys.state_low) / 2
        if np.all(np.abs(s - center) <= cfg.init_noise_region * half):
            a = np.clip(a + cfg.init_noise * self.rng.standard_normal(a.shape), -1, 1)
        return a, False, None

    def init_certificate(self) -> dict:
        """Initial certificate for the initial policy and model (the paper assumes one, App. C):
        with ``barrier.init = "rollout"``, h is first fitted to the states whose model rollouts
        under the policy stay safe for every ensemble member; Alg. 1 then makes it invariant."""
        bc = self.cfg.barrier
        if bc.init == "none":
            return {}
        if bc.init != "rollout":
            raise ValueError(f"barrier.init must be 'rollout' or 'none', got {bc.init!r}")
        return self.fit_to_rollouts(bc.init_fit_steps, regrow=False)

    def fit_to_rollouts(self, steps: int, regrow: bool) -> dict:
        """Fit h to the states whose model rollouts under the current policy stay safe for every
        ensemble member (states drawn uniformly from the box, plus the data).

        With ``regrow``: the target set is the current C_h united with the states near the data
        (within ``regrow_radius`` box half-widths) whose rollouts under the policy plus one of the
        constant action offsets stay safe; only those near-data candidates outside C_h are rolled
        out (uniform states keep their current label), which keeps the step cheap."""
        bc = self.cfg.barrier
        lo = torch.as_tensor(self.sys.state_low, dtype=torch.float32)
        hi = torch.as_tensor(self.sys.state_high, dtype=torch.float32)
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

    # -- Algorithm 1 ------------------------------------------------------------------------
    def _until_quiet(self, max_steps: int, update) -> tuple[bool, int]:
        """Run the adversary, calling ``update(W)`` whenever it finds violating states, until it has
        been quiet for ``quiet_steps`` twice in a row (the second window after re-drawing the
        chains). W holds the chains with U + eps + ``train_margin`` > 0 (hysteresis, see config)."""
        bc = self.cfg.barrier
        self.adv.reset(self.h, self.model, self.policy)
        quiet, windows = 0, 0
        for step in range(1, max_steps + 1):
            self.adv.step(self.h, self.model, self.policy)
            if len(self.adv.violators(bc.eps)) == 0:
                quiet += 1
                if quiet >= bc.quiet_steps:
                    windows += 1
                    if windows >= 2:
                        return True, step
                    quiet = 0
                    self.adv.reset(self.h, self.model, self.policy)
                continue
            quiet, windows = 0, 0
            update(self.adv.violators(bc.eps + bc.train_margin))
            self.adv.invalidate()
        return False, max_steps

    def train_certificate(self, max_steps: int, h_prev: Barrier | None) -> tuple[bool, int]:
        """Alg. 1: MALA adversary + Eq. (4)/(5) updates until the adversary is quiet."""
        bc = self.cfg.barrier
        pool = self.reference_states(h_prev) if bc.reg_states != "candidates" else None

        def update(w):
            if len(w) > bc.max_batch:
                w = w[torch.randperm(len(w), generator=self.tgen)[: bc.max_batch]]
            if pool is None:
                s_reg = self.adv.candidates()
            else:
                s_reg = pool[torch.randint(len(pool), (min(bc.reg_samples, len(pool)),), generator=self.tgen)]
            self.cert.step(self.model, self.policy, w, h_prev, s_reg)

        return self._until_quiet(max_steps, update)

    @torch.no_grad()
    def certified_samples(self, h: Barrier, n: int = 20000) -> torch.Tensor:
        """Uniform samples of C_h: rejection sampling of n states in its bounding box."""
        lo, hi = self.adv.certified_box(h)
        s = lo + (hi - lo) * torch.rand(n, len(lo), generator=self.tgen)
        return s[h(s) >= 0]

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

    def ensure_policy_certified(self, max_steps: int) -> tuple[bool, int]:
        """Adversarial policy steps until the adversary is quiet (two windows), Alg. 4 lines 5-6.
        With ``sac.adv_anchor`` beta > 0 each step also keeps the mean action on a replay minibatch
        near the one of the policy this call started from."""
        sc = self.cfg.sac
        start = copy.deepcopy(self.policy) if sc.adv_anchor > 0 else None

        def update(w):
            anchor = None
            if start is not None:
                s = torch.as_tensor(self.buffer.sample(sc.batch, self.rng)["s"], dtype=torch.float32)
                with torch.no_grad():
                    anchor = (s, start.mean_action(s), sc.adv_anchor)
            self.sac.adversarial_step(w, self.h, self.model, sc.adv_coef, anchor)

        return self._until_quiet(max_steps, update)

    def check_certified(self, steps: int, windows: int = 2) -> bool:
        """Fresh adversaries, no updates: True if none of ``windows`` freshly drawn pools finds a
        violating state in ``steps`` steps (the same test Alg. 1 stops on)."""
        eps = self.cfg.barrier.eps
        for _ in range(windows):
            self.adv.reset(self.h, self.model, self.policy)
            for _ in range(steps):
                self.adv.step(self.h, self.model, self.policy)
                if len(self.adv.violators(eps)):
                    return False
        return True

    # -- one epoch of Algorithm 2 -------------------------------------------------------------
    def collect(self) -> dict:
        ec = self.cfg.explore
        env = self._env("explore")
        plan = ([("uniform", 1.0)] * ec.uniform_episodes + [("policy", 1.0)] * ec.episodes_per_epoch
                + [("policy", 2.0)] * ec.noisy_episodes)
        explore_ok = self.certified
        min_std = ec.min_std if self.epoch + 1 >= ec.min_std_from_epoch else 0.0
        n0 = len(self.buffer)
        eps = []
        try:
            for kind, scale in plan:
                def choose(s, kind=kind, scale=scale):
                    if not explore_ok:  # no certified triple: the last certified policy acts
                        a = self._safe_act(s)
                        with torch.no_grad():
                            u = float(U(self.h, self.model, torch.as_tensor(s, dtype=torch.float32)[None],
                                        torch.as_tensor(a, dtype=torch.float32)[None])[0])
                        return a, True, u
                    res = safeguarded_action(s, self.policy, self.h, self.model, ec.n, ec.noise_decay,
                                             uniform=kind == "uniform", noise_scale=scale, gen=self.tgen,
                                             region_std=ec.region_std, min_std=min_std)
                    return res.action, res.safeguard, res.U
                label = (("uniform" if kind == "uniform" else f"policy, noise x{scale:g}")
                         if explore_ok else "last certified policy")
                eps.append(self._episode(env, choose, label=label))
        finally:
            env.close()
        new = self.buffer.index(np.arange(n0, len(self.buffer)))
        err = prediction_error(self.model, new["s"], new["a"], new["s2"])
        steps = sum(e["length"] for e in eps)
        return {"explore_return": float(np.mean([e["return"] for e in eps])),
                "safeguard_rate": sum(e["safeguard"] for e in eps) / max(steps, 1),
                "model_failures": sum(e["model_failures"] for e in eps),
                "model_rmse": err["rmse"], "model_outside": err["outside_box"]}

    def optimise_policy(self) -> dict:
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

    def evaluate(self) -> dict:
        env = self._env("eval")
        try:
            act = self._mean_act if self.certified else self._safe_act
            ep = self._episode(env, lambda s: (act(s), False, None), add=True)
        finally:
            env.close()
        self.last_eval_states = ep["states"]
        with torch.no_grad():  # where the evaluated policy ends up, and how close to C_h's edge
            hv = self.h(torch.as_tensor(ep["states"], dtype=torch.float32))
        return {"eval_return": ep["return"], "eval_length": ep["length"],
                "eval_end_h": float(hv[-1]), "eval_min_h": float(hv.min()),
                "eval_end_state": " ".join(f"{x:.4g}" for x in ep["states"][-1])}

    def keep_if_best(self, epoch: int, ret: float) -> None:
        """Remember the evaluated (policy, h) pair if the evaluation ran the current policy
        certified by the current h and its return is the highest so far (``final_policy``)."""
        if not self.certified or not np.isfinite(ret):
            return
        if self.best is not None and ret <= self.best["return"]:
            return
        self.best = {"epoch": int(epoch), "return": float(ret),
                     "policy": copy.deepcopy(self.policy.state_dict()),
                     "h": copy.deepcopy(self.h.state_dict())}

    def adopt_final_policy(self) -> int:
        """With ``final_policy: best``, load the best certified pair into the policy and h (for the
        final evaluation, policy.pt and the plots; last.pt keeps the training state). Returns the
        epoch whose policy is delivered (with ``last``, or no certified pair kept: the acting policy's,
        the last certified one if the last epoch's policy was not)."""
        if self.cfg.final_policy == "last" or self.best is None:
            return self.acting_policy_epoch()
        self.policy.load_state_dict(self.best["policy"])
        self.h.load_state_dict(self.best["h"])
        self.certified = True
        self.adv.invalidate()
        return self.best["epoch"]

    def box_samples(self, n: int = 20000) -> torch.Tensor:
        """n uniform states of the state box."""
        lo = torch.as_tensor(self.sys.state_low, dtype=torch.float32)
        hi = torch.as_tensor(self.sys.state_high, dtype=torch.float32)
        return lo + (hi - lo) * torch.rand(n, len(lo), generator=self.tgen)

    @staticmethod
    @torch.no_grad()
    def volume_on(h: Barrier, s: torch.Tensor) -> float:
        """Fraction of the states s that h certifies (h >= 0)."""
        return float((h(s) >= 0).float().mean())

    def certified_volume(self, n: int = 20000) -> float:
        """Fraction of the state box certified (h >= 0), by uniform sampling."""
        return self.volume_on(self.h, self.box_samples(n))

    @torch.no_grad()
    def uniform_violations(self, n: int = 20000) -> float:
        """An audit of the adversary: the fraction of uniform samples of C_h (rejection sampling in
        its bounding box) where U(s, pi(s), h) > 0 under the model, i.e. where the certificate is
        not invariant for the model. Alg. 1 should leave this at 0; MALA with few chains can miss
        whole regions, which this exposes (in 2-D or 4-D uniform sampling is dense enough)."""
        s = self.certified_samples(self.h, n)
        if len(s) == 0:
            return 0.0
        u = U(self.h, self.model, s, self.policy.mean_action(s))
        return float((u > 0).float().mean())

    def run_epoch(self) -> dict:
        cfg = self.cfg
        t0 = time.time()
        timer = {}

        def lap(name):
            nonlocal t0
            now = time.time()
            timer[f"t_{name}"] = round(now - t0, 2)
            t0 = now

        start = t0
        row: dict = {"epoch": self.epoch + 1}
        row.update(self.collect())
        lap("collect")
        if cfg.dynamics.refit_normalizers:  # the predictions are unchanged, the scales follow the data
            data = self.buffer.all()
            self.model.refit_normalizers(data["s"], data["a"], data["s2"])
        self.dyn.train(self.buffer, cfg.dynamics.steps_per_epoch, self.rng)
        self.refresh_support()
        self.adv.invalidate()
        lap("model")
        # "carry": while the triple is uncertified, h is not grown but carved further, for the
        # policy that acts meanwhile (the last certified one), which training restarts from
        carry = cfg.barrier.on_stuck == "carry" and not self.certified
        if carry:
            self.policy.load_state_dict(self.safe_policy_state)
            self.adv.invalidate()
        h_prev = self.cert.snapshot()
        cert_start = copy.deepcopy(self.cert.state_dict())  # h and its optimiser, for a rollback
        pi_start = copy.deepcopy(self.sac.state_dict())  # the policy h_prev was certified for
        regrow = cfg.barrier.regrow and not carry
        dilate = regrow and cfg.barrier.regrow_mode == "dilate"
        judge = None  # "if_larger": fixed uniform states on which the regrown C_h must beat C_h-hat
        if regrow and cfg.barrier.regrow_accept == "if_larger":
            judge = self.box_samples()
            vol_prev = self.volume_on(h_prev, judge)
        if regrow:
            if dilate:
                self.h.dilate(self.dilation)
                self.adv.invalidate()
                row["dilation"] = self.dilation
            else:
                self.fit_to_rollouts(cfg.barrier.regrow_fit_steps, regrow=True)
            # let the policy learn to hold the grown set before Alg. 1 carves back the rest
            self.ensure_policy_certified(cfg.barrier.regrow_policy_steps)
        found, steps = self.train_certificate(cfg.barrier.max_steps, h_prev)
        if found and judge is not None:
            vol = self.volume_on(self.h, judge)
            row.update(regrow_volume=vol, prev_volume=vol_prev)
            if vol < vol_prev:  # the regrowth lost more than it added: Alg. 1 from h-hat and pi_start
                grown = (copy.deepcopy(self.cert.state_dict()), copy.deepcopy(self.sac.state_dict()))
                self.cert.load_state_dict(cert_start)
                self.sac.load_state_dict(pi_start)
                self.adv.invalidate()
                again, steps2 = self.train_certificate(cfg.barrier.max_steps, h_prev)
                steps += steps2
                undone = again and self.volume_on(self.h, judge) > vol
                if not undone:  # the regrown certificate (certified) is still the larger one
                    self.cert.load_state_dict(grown[0])
                    self.sac.load_state_dict(grown[1])
                    self.adv.invalidate()
                row["regrowth_undone"] = undone
        if dilate:
            self.dilation = min(0.6, self.dilation * 1.25) if found else max(0.02, self.dilation / 2)
        if not found and not carry:  # roll back (facts sheet): the policy must then satisfy the
            self.cert.load_state_dict(cert_start)  # old certificate; h and Adam's moments as they were
            self.adv.invalidate()
        row.update(cert_found=found, cert_steps=steps)
        lap("certificate")
        # the policy the certificate now in force was trained (or, after a rollback, certified) for
        pi_prev = copy.deepcopy(self.sac.state_dict()) if found else pi_start
        row.update(self.optimise_policy())
        lap("policy")
        ok, psteps = self.ensure_policy_certified(cfg.barrier.max_steps)
        if not ok:  # roll the policy back to the one h was trained for, and check it with the
            self.sac.load_state_dict(pi_prev)  # current model
            self.adv.invalidate()
            ok = self.check_certified(cfg.barrier.quiet_steps)
            if not ok and cfg.barrier.on_stuck == "carry":  # carve h until it certifies that policy
                ok, _ = self.train_certificate(cfg.barrier.max_steps, h_prev)
        self.certified = ok
        if ok:
            self.set_safe_policy(self.policy.state_dict(), self.epoch + 1)
        row.update(policy_certified=ok, policy_cert_steps=psteps)
        lap("verify")
        if cfg.eval_every and (self.epoch + 1) % cfg.eval_every == 0:
            row.update(self.evaluate())
            self.keep_if_best(self.epoch + 1, row["eval_return"])
        row.update(certified_volume=self.certified_volume(), uniform_violations=self.uniform_violations(),
                   env_steps=self.counters.env_steps,
                   episodes=self.counters.episodes, violations=self.counters.violations)
        lap("eval")
        row.update(timer, epoch_s=round(time.time() - start, 2))
        self.epoch += 1
        return row

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": CKPT_VERSION, "system": self.sys.name, "config": self.cfg.to_dict(),
                "epoch": self.epoch, "counters": self.counters.to_dict(), "dilation": self.dilation,
                "certified": self.certified, "safe_policy": self.safe_policy_state,
                "safe_policy_epoch": self.safe_policy_epoch,
                "model": self.dyn.state_dict(),
                "barrier": self.cert.state_dict(), "sac": self.sac.state_dict(),
                "buffer": self.buffer.state_dict(), "log": self.log.rows, "rng": self._rng_state(),
                "best": self.best}

    def _rng_state(self) -> dict:
        return {**rng_state(self.rng), "torch": torch.get_rng_state(),
                "tgen": self.tgen.get_state(), "adv": self.adv.gen.get_state()}

    def load_state_dict(self, d: dict) -> None:
        if d.get("version") != CKPT_VERSION:
            raise ValueError(f"checkpoint version {d.get('version')} is not supported")
        if d["system"] != self.sys.name:
            raise ValueError(f"checkpoint is from task {d['system']!r}, not {self.sys.name!r}")
        self.epoch, self.certified = d["epoch"], d["certified"]
        self.dilation = float(d.get("dilation", self.cfg.barrier.dilation))
        # checkpoints written before safe_policy_epoch existed: the last epoch whose check passed
        safe_epoch = d.get("safe_policy_epoch")
        if safe_epoch is None:
            safe_epoch = max([0] + [int(r["epoch"]) for r in d["log"]
                                    if r.get("policy_certified") is True and "epoch" in r])
        self.set_safe_policy(d["safe_policy"], safe_epoch)
        self.counters = MonitorCounters(**d["counters"])
        self.dyn.load_state_dict(d["model"])
        self.cert.load_state_dict(d["barrier"])
        self.sac.load_state_dict(d["sac"])
        self.buffer.load_state_dict(d["buffer"])
        self.refresh_support()
        self.log.rows = list(d["log"])
        self.best = d.get("best")  # absent from checkpoints written before final_policy existed
        self._rows_at_start = len(self.log.rows)
        r = d["rng"]
        set_rng_state(self.rng, r)
        torch.set_rng_state(r["torch"])
        self.tgen.set_state(r["tgen"])
        self.adv.gen.set_state(r["adv"])
        self.adv.state = None

    def save(self) -> Path:
        ck = self.dir / "checkpoints"
        ck.mkdir(parents=True, exist_ok=True)
        path = ck / "last.pt"
        tmp = ck / "last.pt.tmp"
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)
        self.save_policy(self.acting_policy_epoch())
        return path

    def save_policy(self, epoch: int) -> None:
        """checkpoints/policy.pt: the policy that acts (the last certified one while the current
        policy is not certified), with the epoch it is from."""
        state = self.policy.state_dict() if self.certified else self.safe_policy_state
        torch.save({"spec": self.policy.spec(), "state_dict": state,
                    "meta": {"task": self.sys.name, "epoch": int(epoch)}},
                   self.dir / "checkpoints" / "policy.pt")

    def resume(self) -> None:
        path = self.dir / "checkpoints" / "last.pt"
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint to resume from in {str(self.dir)!r}")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # real steps taken after the checkpoint (before the interruption) still count: the ledger
        # holds every finished episode with the running totals
        self.recount_from_ledger()

    def recount_from_ledger(self) -> None:
        """Continue the counters from the largest totals the ledger records (every step taken
        before an interruption counts, checkpointed or not)."""
        recount(self.counters, self.dir / "ledger.jsonl")

    # -- the whole run ----------------------------------------------------------------------
    def prior_wall_clock(self) -> float:
        """Wall-clock of the run's earlier sessions (before a resume), from the metrics rows."""
        return float(sum(r.get("epoch_s", 0.0) for r in self.log.rows[: self._rows_at_start]))

    def make_plots(self) -> None:
        from crabs.plots import figure2, figure3

        figure2([("CRABS", self.dir)], self.dir / "figure2.png", title=f"{self.sys.name}")
        kernel = None
        if self.sys.name in ("upright", "tilt"):
            from crabs.oracle import viability_kernel

            kernel = viability_kernel()
        traj = getattr(self, "last_eval_states", None)
        figure3(self.h, self.sys.spec, self.sys.state_low, self.sys.state_high, traj,
                self.dir / "figure3.png", title=f"{self.sys.name}: C_h after {self.epoch} epochs",
                kernel=kernel)

    def write_metrics(self) -> None:
        write_csv(self.dir / "metrics.csv", self.log.rows)


# -- the public entry point -------------------------------------------------------------------
def train(system: str | System | None, config: Config | None = None, out: str | Path = "runs/crabs",
          resume: bool = False, progress: bool = True, epochs: int | None = None) -> dict:
    """Run CRABS (Algorithm 2) on a built-in task name or a :class:`System`, writing the run folder
    ``out`` (config, ledger, metrics, checkpoints, summary.json, plots). With ``resume=True`` the
    run continues from ``out``'s last checkpoint with ``out``'s own config and counters (``system``
    may then be None for a built-in task, and ``epochs`` raises the run's epoch budget); a run
    that died during start-up starts up again, its earlier steps and violations still counted; a
    finished run returns its summary without touching the environment."""
    import yaml
    from tqdm.auto import tqdm

    from crabs.config import load_config
    from crabs.runs import claim_run_dir, write_json
    from crabs.system import builtin_system

    out = claim_run_dir(out, resume)
    cfg_path = out / "config.yaml"
    if resume:
        cfg = Config.from_dict(yaml.safe_load(cfg_path.read_text()))
        if system is None:
            system = cfg.task
        name = system if isinstance(system, str) else system.name
        if name != cfg.task:
            raise ValueError(f"{str(out)!r} holds a run of task {cfg.task!r}, not {name!r}")
        if epochs is not None:
            cfg = cfg.replace(epochs=epochs)
            cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        done = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
        if done is not None and done["epochs"] >= cfg.epochs:
            # the run had finished: nothing is left to do (no checkpoint to load), and a final
            # evaluation would take (counted) real steps the finished run never took
            if progress:
                tqdm.write(f"{str(out)!r} finished its {cfg.epochs} epochs: nothing to do "
                           "(pass epochs to extend it)")
            return done
    else:
        if system is None:
            raise ValueError("a task or System is required for a new run")
        if config is None:
            config = load_config(task=system if isinstance(system, str) else None)
        cfg = config
        name = system if isinstance(system, str) else system.name
        if cfg.task != name:
            cfg = cfg.replace(task=name)
        cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if isinstance(system, str):
        system = builtin_system(system, cfg.sac.hidden, cfg.sac.act)
    crabs = CRABS(system, cfg, out, progress)
    started = time.time()
    if resume and (out / "checkpoints" / "last.pt").exists():
        crabs.resume()
    else:
        if resume:  # died during start-up: start up again, continuing the ledger's counts
            crabs.recount_from_ledger()
        info = crabs.startup()
        row = {"epoch": 0, **info, **crabs.evaluate(), "env_steps": crabs.counters.env_steps,
               "episodes": crabs.counters.episodes, "violations": crabs.counters.violations,
               "epoch_s": round(time.time() - started, 2)}
        crabs.keep_if_best(0, row["eval_return"])
        crabs.log.rows.append(row)
        crabs.write_metrics()
        crabs.save()
    bar = tqdm(range(crabs.epoch, cfg.epochs), initial=crabs.epoch, total=cfg.epochs,
               desc=f"crabs {system.name}", disable=not progress, unit="epoch")
    for _ in bar:
        row = crabs.run_epoch()
        crabs.log.rows.append(row)
        crabs.write_metrics()
        if cfg.checkpoint_every and crabs.epoch % cfg.checkpoint_every == 0:
            crabs.save()
        bar.set_postfix(violations=crabs.counters.violations,
                        ret=f"{row.get('eval_return', float('nan')):.3g}",
                        vol=f"{row['certified_volume']:.3f}", steps=crabs.counters.env_steps)
    crabs.save()
    last_return = next((r["eval_return"] for r in reversed(crabs.log.rows) if "eval_return" in r), None)
    last_certified = crabs.certified  # before the best pair, if delivered, is loaded
    policy_epoch = crabs.adopt_final_policy()
    crabs.save_policy(policy_epoch)
    final = crabs.evaluate()
    crabs.write_metrics()
    summary = {"task": system.name, "algorithm": "crabs", "seed": cfg.seed,
               "env_steps": crabs.counters.env_steps, "episodes": crabs.counters.episodes,
               "violations": crabs.counters.violations, "final_eval_return": final["eval_return"],
               # the delivered policy (final_policy): its epoch, and the last epoch's evaluation
               "final_policy": cfg.final_policy, "final_policy_epoch": policy_epoch,
               "last_epoch_eval_return": last_return,
               # where the final evaluation ended and h there (h well above 0: the policy, not
               # the certificate, limits the return), as the eval_* columns of metrics.csv
               "final_eval_end_state": [float(x) for x in crabs.last_eval_states[-1]],
               "final_eval_end_h": final["eval_end_h"], "final_eval_min_h": final["eval_min_h"],
               "mean_return": float(np.mean([r["eval_return"] for r in crabs.log.rows
                                             if "eval_return" in r])),
               "certified_volume": crabs.certified_volume(), "epochs": crabs.epoch,
               # exploration steps whose action had U <= 0 (every ensemble member put s' in C_h)
               # and whose real s' fell outside C_h: a broken link of the guarantee (model
               # calibration) even when no violation follows
               "model_failures": int(sum(r.get("model_failures", 0) for r in crabs.log.rows)),
               "certified": last_certified,
               "wall_clock_s": round(time.time() - started + crabs.prior_wall_clock(), 1)}
    write_json(out / "summary.json", summary)
    crabs.make_plots()
    return summary
