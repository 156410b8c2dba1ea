"""Certifying a triple (model, h, policy): Alg. 1 until the adversary is quiet, the adversarial
policy steps of Alg. 4 (lines 5-6) until it is quiet, and the check that fresh adversaries find no
violating state. Model, certificate and policy are arguments, never read off a trainer.

"Quiet" is the stop rule of Alg. 1: no chain of the adversary with U + eps > 0 for ``quiet_steps``
steps, twice in a row, the second window after re-drawing the chains (the release waits 1,000 then
5,000 steps).

Gated certification (``barrier.audit``, a departure: the paper trusts the quiet adversary). A
triple counts as certified only if, once the adversary is quiet, an independent audit finds no
certified state with U + eps > 0 among ``audit_samples`` uniform states of C_h, states of C_h's
slabs next to the safety limits (``audit_edge_samples``), the states of C_h that the mean policy
visits under the model from ``audit_rollouts`` of the uniform ones, the adversary's chain positions
and the replay states that lie in C_h. A found counter-example always blocks: in
Alg. 1 and the adversarial policy steps it is trained on and the stop rule starts over; in the
check it fails the triple. With ``audit_train: until_fixed`` the audit's counter-examples are
trained on, step after step, until none is left (each has left C_h or has U + eps + train_margin
<= 0) or the call's step budget is spent; with ``once`` (the fourth freeze) they got one step and
the adversary ran on, although it had just shown that it does not find them. The uniform part
misses a counter-example region holding a fraction p of C_h's volume with probability (1 - p)^n:
for n = 20,000 and p = 1e-3, 2e-9. The audit draws from its own generator, so it changes no other random draw.
Every counter-example an audit finds (the delivery audit's too) is remembered
(``audit_memory``) and re-checked by every later audit, so a sliver found once, by luck or by
the larger delivery audit, blocks until h or the policy has changed there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from crabs.barrier import Barrier, CertificateTrainer, U
from crabs.config import BarrierConfig
from crabs.mala import Adversary
from crabs.states import EDGE_WIDTH, certified_box, certified_states, edge_states, rollout_states

Update = Callable[[torch.Tensor], None]
"""Called with the violating states W whenever the adversary finds some."""


class Certifier:
    """The adversary (a warm-started MALA pool), the independent audit, and the three procedures
    run against them. ``replay()`` gives the states of the data (for the audit), ``audit_gen`` is
    the audit's own generator."""

    def __init__(self, adv: Adversary, cfg: BarrierConfig, gen: torch.Generator,
                 replay: Callable[[], torch.Tensor] | None = None, audit_gen: torch.Generator | None = None):
        self.adv, self.cfg, self.gen = adv, cfg, gen
        self.replay = replay
        self.audit_gen = audit_gen if audit_gen is not None else torch.Generator().manual_seed(0)
        self.catches = 0   # audits that found a counter-example the quiet adversary had missed
        self.memory = torch.zeros(0, len(adv.low))   # counter-examples found before (audit_memory)

    def remember(self, w: torch.Tensor) -> None:
        """Keep the counter-examples ``w`` for every later audit (the newest ``audit_memory``)."""
        if self.cfg.audit_memory > 0 and len(w):
            self.memory = torch.cat([self.memory, w.detach().to(self.memory.dtype)])[-self.cfg.audit_memory:]

    @torch.no_grad()
    def audit(self, h: Barrier, model, policy) -> torch.Tensor:
        """The counter-examples the audit finds: certified states with U(s, pi(s), h) + eps > 0
        among uniform states of C_h, the adversary's chains and the replay states in C_h (empty
        with ``barrier.audit`` off)."""
        c, adv = self.cfg, self.adv
        if not c.audit:
            return torch.zeros(0, len(adv.low))
        parts = self.sampled_states(h, model, policy, c.audit_samples, c.audit_edge_samples,
                                    c.audit_rollouts, c.audit_rollout_steps, self.audit_gen)
        if adv.state is not None:
            parts.append(adv.state.x)
        if self.replay is not None:
            parts.append(self.replay())
        new = self.counter_examples(h, model, policy, torch.cat(parts))
        w = torch.cat([new, self.counter_examples(h, model, policy, self.memory)])
        self.remember(new)                     # the new ones only: the memory's are kept already
        self.catches += int(len(w) > 0)
        return w

    @torch.no_grad()
    def counter_examples(self, h: Barrier, model, policy, s: torch.Tensor, margin: float | None = None,
                         chunk: int = 20000) -> torch.Tensor:
        """The states of ``s`` in C_h with U(s, pi(s), h) + margin > 0 (margin: eps unless given; in
        chunks, for large audits). A non-finite h or U counts against the certificate: never a silent
        pass."""
        margin = self.cfg.eps if margin is None else margin
        s = s[~(h(s) < 0)]
        found = [x[~(U(h, model, x, policy.mean_action(x)) + margin <= 0)] for x in s.split(chunk)]
        return torch.cat(found) if found else s

    @torch.no_grad()
    def sampled_states(self, h: Barrier, model, policy, uniform: int, edge: int, starts: int, steps: int,
                       gen: torch.Generator) -> list[torch.Tensor]:
        """The audits' drawn parts, in this order from ``gen``: ``uniform`` states of C_h, up to
        ``edge`` of its slabs next to the safety limits (B_safe's cliff), and the states of C_h the
        closed loop visits in ``steps`` steps from the first ``starts`` uniform ones (no draws)."""
        adv = self.adv
        box = certified_box(h, adv.low, adv.high, adv.cfg.box_samples, adv.cfg.box_scale, gen)
        inside = certified_states(h, box, uniform, gen)
        return [inside, edge_states(h, (adv.low, adv.high), h.spec, edge, EDGE_WIDTH, gen),
                rollout_states(h, model, policy, inside[:starts], steps)]

    @torch.no_grad()
    def delivery_audit(self, h: Barrier, model, policy, n: int, horizon: int,
                       gen: torch.Generator) -> torch.Tensor:
        """The audit a pair must pass to become the run's best (``barrier.delivery_audit``): the
        regular audit's drawn parts at n states each (uniform states of C_h, its slabs, the closed
        loop from n // 100 of the uniform ones for ``horizon`` steps), drawn from ``gen`` so that the
        run's other draws are as without it. Returns the counter-examples to R.3 itself (U > 0, as
        ``crabs verify`` judges; the training audit's margin eps is for training)."""
        parts = self.sampled_states(h, model, policy, n, n, n // 100, horizon, gen)
        found = self.counter_examples(h, model, policy, torch.cat(parts), margin=0.0)
        self.remember(found)
        return found

    def until_quiet(self, h: Barrier, model, policy, max_steps: int, update: Update) -> tuple[bool, int]:
        """Run the adversary, calling ``update(W)`` whenever it finds violating states, until it has
        been quiet twice in a row (see the module docstring). W holds the chains with
        U + eps + ``train_margin`` > 0 (hysteresis, docs/config.md). Returns (quiet, steps)."""
        c, adv = self.cfg, self.adv
        adv.reset(h, model, policy)
        quiet, windows, step = 0, 0, 0
        while step < max_steps:
            step += 1
            adv.step(h, model, policy)
            if len(adv.violators(c.eps)) == 0:
                quiet += 1
                if quiet >= c.quiet_steps:
                    windows += 1
                    if windows >= 2:
                        found = self.audit(h, model, policy)
                        if len(found) == 0:
                            return True, step
                        quiet, windows = 0, 0   # a counter-example blocks: train on it, start over
                        step = self.fix(h, model, policy, found, update, step, max_steps)
                        adv.invalidate()
                        continue
                    quiet = 0
                    adv.reset(h, model, policy)
                continue
            quiet, windows = 0, 0
            update(adv.violators(c.eps + c.train_margin))
            adv.invalidate()
        return False, max_steps

    def fix(self, h: Barrier, model, policy, found: torch.Tensor, update: Update, step: int,
            max_steps: int) -> int:
        """Train on the audit's counter-examples ``found``: one ``update`` (``audit_train: once``),
        or updates on those still counter-examples with the training margin until none is left or
        the step budget is spent (``until_fixed``). Each update counts as a step; returns the steps
        taken so far."""
        c = self.cfg
        update(found)
        if c.audit_train == "once":
            return step
        while step < max_steps:
            found = self.counter_examples(h, model, policy, found, margin=c.eps + c.train_margin)
            if len(found) == 0:
                break
            step += 1
            update(found)
        return step

    def train_certificate(self, cert: CertificateTrainer, model, policy, max_steps: int,
                          h_prev: Barrier | None, reg_pool: torch.Tensor | None) -> tuple[bool, int]:
        """Alg. 1: Eq. (4)/(5) updates of h at the adversary's violators until it is quiet. Reg's
        states (Sec. 4.2) are the chains, or draws from ``reg_pool`` when one is given
        (``barrier.reg_states``)."""
        c = self.cfg

        def update(w):
            if len(w) > c.max_batch:
                w = w[torch.randperm(len(w), generator=self.gen)[: c.max_batch]]
            if reg_pool is None:
                s_reg = self.adv.candidates()
            else:
                n = min(c.reg_samples, len(reg_pool))
                s_reg = reg_pool[torch.randint(len(reg_pool), (n,), generator=self.gen)]
            cert.step(model, policy, w, h_prev, s_reg)

        return self.until_quiet(cert.h, model, policy, max_steps, update)

    def hold_policy(self, sac, h: Barrier, model, max_steps: int, coef: float,
                    anchor: tuple[float, Callable[[], torch.Tensor]] | None = None) -> tuple[bool, int]:
        """Adversarial policy steps (Alg. 4 lines 5-6) until the adversary is quiet. With ``anchor``
        (beta, draw replay states), each step also pays beta x the squared change of the mean
        action on the drawn states from the policy this call started with (``sac.adv_anchor``)."""
        start = copy.deepcopy(sac.policy) if anchor is not None else None

        def update(w):
            pin = None
            if start is not None:
                beta, draw = anchor
                s = draw()
                with torch.no_grad():
                    pin = (s, start.mean_action(s), beta)
            sac.adversarial_step(w, h, model, coef, pin)

        return self.until_quiet(h, model, sac.policy, max_steps, update)

    def check(self, h: Barrier, model, policy, steps: int, windows: int = 2) -> bool:
        """Fresh adversaries, no updates: True if none of ``windows`` freshly drawn pools finds a
        violating state in ``steps`` steps (the test Alg. 1 stops on) and the audit finds none."""
        eps, adv = self.cfg.eps, self.adv
        for _ in range(windows):
            adv.reset(h, model, policy)
            for _ in range(steps):
                adv.step(h, model, policy)
                if len(adv.violators(eps)):
                    return False
        return len(self.audit(h, model, policy)) == 0


@torch.no_grad()
def uniform_violations(h, model, policy, inside: torch.Tensor) -> float:
    """An audit of the adversary: the fraction of the uniform certified states ``inside`` where
    U(s, pi(s), h) > 0 under the model, i.e. where the certificate is not invariant for the model.
    Alg. 1 should leave this at 0; MALA with few chains can miss whole regions, which this exposes
    (in 2-D or 4-D uniform sampling is dense enough)."""
    if len(inside) == 0:
        return 0.0
    return float((~(U(h, model, inside, policy.mean_action(inside)) <= 0)).float().mean())  # NaN: > 0
