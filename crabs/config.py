"""Configuration: one typed object holding every hyperparameter, with the paper's value beside the
default wherever they differ (``PAPER`` below, and docs/config.md).

Configs are data: ``Config.from_dict`` / ``load_config(path)`` reject unknown keys and values of the
wrong type, so a typo never silently falls back to a default. Each section checks its own fields'
ranges in its ``validate``; ``--set key=value`` overrides (``parse_overrides``) go through the same path
as a YAML file.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class DynamicsConfig:
    """Calibrated ensemble (Sec. 4.3, App. C.2)."""

    k: int = 5                                 # paper: 5
    hidden: tuple[int, ...] = (128, 128)       # paper: (400, 400, 400, 400); release: 4 x 256
    act: str = "silu"                          # paper: Swish (= SiLU)
    lr: float = 1e-3                           # paper: 1e-3
    weight_decay: float = 7.5e-5               # paper: 7.5e-5
    batch: int = 256                           # paper: 256
    steps_per_epoch: int = 500                 # paper: 1000
    init_steps: int = 3000                     # paper (Move/Swing): 20000
    max_log_std: float = 0.5                   # release: initial soft upper bound on log std
    min_log_std: float = -10.0                 # release
    bound_coef: float = 0.001                  # release: loss += coef * (max_log_std - min_log_std)
    saturate_actions: bool = True              # the model sees clip(a, +-System.action_bound) where the
                                               # system declares a saturation; paper: the raw action
    refit_normalizers: bool = False            # re-centre the normalisation on the whole buffer every
                                               # epoch (predictions unchanged); false: fitted once on
                                               # the start-up data; paper: silent (release: replay stats)
    region_std: float = 0.0                    # > 0: U's region is each member's mean moved c sigma
                                               # to its worst box corner; paper: the K means (0)
    support_radius: float = 0.0                # > 0: the model is trusted only within this distance of
                                               # its data (box half-widths, max norm); paper: no such
                                               # limit (0)

    def validate(self, where: str) -> None:
        if not self.region_std >= 0:
            raise ValueError(f"{where}.region_std: must be >= 0, got {self.region_std}")


HANDCRAFTED = "crabs_handcrafted"
"""The algorithm name of a CRABS run with ``barrier.learn: false`` (the paper's handcrafted-h
ablation, Sec. 6), in its summary.json, so ``crabs compare`` draws it as an algorithm of its own."""


def algorithm_of(config: dict) -> str:
    """The algorithm a run's config (as a dict, e.g. a run folder's config.yaml) belongs to: its
    ``algorithm`` key (the baselines'), else ``HANDCRAFTED`` for CRABS with ``barrier.learn: false``,
    else "crabs"."""
    if "algorithm" in config:
        return str(config["algorithm"])
    barrier = config.get("barrier")
    return HANDCRAFTED if isinstance(barrier, dict) and barrier.get("learn") is False else "crabs"


@dataclass
class BarrierConfig:
    """Certificate h and its training (Sec. 3, Alg. 1, Eq. 4-5, Sec. 4.2)."""

    hidden: tuple[int, ...] = (64, 64)         # paper: (256, 256)
    act: str = "relu"                          # paper: ReLU
    lr: float = 1e-3
    reg_coef: float = 1.0                      # paper: lambda = 0.001 in Eq. (5) (on its candidates)
    reg_states: str = "visited"                # where Reg's expectation over S is taken: "candidates"
                                               # (the MALA pool, the paper's approximation) or
                                               # "certified" (uniform states of the previous C_h)
                                               # or "visited" (replay states inside the previous C_h)
    reg_samples: int = 1024                    # states per update with reg_states != "candidates"
    eps: float = 0.002                         # release: violating means U + eps > 0 (Swing 0.01)
    train_margin: float = 0.01                 # once the adversary finds a state with U + eps > 0,
                                               # Alg. 1 updates on all with U + eps + margin > 0, so
                                               # C* is pushed below -eps with room to spare (paper: 0)
    max_steps: int = 4000                      # release: 20000
    quiet_steps: int = 300                     # release: 1000 then 5000 quiet steps
    pretrain_steps: int = 4000                 # steps of Alg. 1 for the initial certificate
    init: str = "rollout"                      # initial certificate: "rollout" fits h to the states
                                               # whose model rollouts under pi_init stay safe, then
                                               # runs Alg. 1; "none" runs Alg. 1 from random f;
                                               # "handcrafted" builds h by hand (crabs/handcrafted.py:
                                               # a level set of pi_init's quadratic Lyapunov function
                                               # cut by B_safe), with learn: fitted by f, then Alg. 1
    learn: bool = True                         # false: Alg. 2 without line 5 (the paper's Sec. 6
                                               # ablation): h stays the handcrafted one all run, no
                                               # Alg. 1, regrowth or edge-pad growth; needs init:
                                               # handcrafted
    init_samples: int = 8192
    init_rollout_steps: int = 100
    init_fit_steps: int = 1500
    max_batch: int = 256                       # adversarial states per update (random subset of W)
    box_barrier: bool = True                   # h also subtracts B_safe's w() of the state box, so
                                               # C_h never leaves the box the adversary searches
                                               # (paper: no such term; False)
    regrow: bool = True                        # each epoch, before Alg. 1, refit h to C_h united with
                                               # the states whose model rollouts under the current
                                               # policy stay safe (paper: no such step; False)
    regrow_mode: str = "dilate"                # how C_h is regrown: "rollouts" (refit h to the states
                                               # near the data whose model rollouts stay safe) or
                                               # "dilate" (scale f - f(s0) by 1 - dilation: the next
                                               # level set of h's own shape)
    regrow_accept: str = "always"              # "if_larger": a regrowth is kept only if C_h after
                                               # Alg. 1 is larger than the previous C_h; otherwise
                                               # Alg. 1 runs again from the previous h and policy
                                               # (paper: no regrowth, so no such test; "always")
    dilation: float = 0.3                      # "dilate": the first epoch's dilation; it grows by
                                               # 1.25x after an epoch whose Alg. 1 went quiet and
                                               # halves after one that was rolled back (0.02 - 0.6)
    on_stuck: str = "carry"                    # Alg. 1 not quiet within max_steps while the triple
                                               # is already uncertified: "rollback" restores the
                                               # previous h (facts sheet), "carry" keeps the carved h
                                               # and goes on carving next epoch, without regrowth;
                                               # and if neither the trained nor the previous policy
                                               # passes the check, Alg. 1 carves h for the previous
                                               # one (paper: no such step)
    regrow_fit_steps: int = 500
    regrow_offsets: tuple[float, ...] = (-0.5, -0.25, 0.0, 0.25, 0.5)
                                               # constant action offsets tried in the rollouts: a
                                               # state counts if one offset policy keeps it safe
    regrow_radius: float = 0.25                # only states this close to the data (in units of the
                                               # box's half-widths) are added: certify near the
                                               # trajectories (Sec. 1)
    regrow_samples: int = 4096                 # candidate states drawn near the data per regrowth
    regrow_policy_steps: int = 300             # adversarial policy steps on the grown set before
                                               # Alg. 1 carves back what the policy cannot hold
    edge_factor: float = 2.0                   # C_h keeps each constrained coordinate this many
                                               # times the model's largest one-step miss (the real
                                               # next state beyond the K means' range, measured on
                                               # transitions the model was not trained on) inside
                                               # its limit; 0: the paper's B_safe (loop.widen_edge)
    audit: bool = True                         # certified only if, once the adversary is quiet, an
                                               # independent audit (uniform states of C_h, the
                                               # chains, the replay states in C_h) finds no state
                                               # with U + eps > 0 (certify.py); paper: no audit
    audit_samples: int = 20000                 # uniform states of C_h per audit (and at most this
                                               # many replay states): a counter-example region of
                                               # 1e-3 of C_h is missed with probability 2e-9
    audit_edge_samples: int = 4000             # the audit also draws up to this many states of C_h
                                               # from the slabs within 5% of each safety limit
                                               # (inside the edge pad), where B_safe's cliff leaves
                                               # slivers the uniform ones miss (held-out Swing seed
                                               # 10); 0: uniform states only (the freeze of bd02729)
    audit_rollouts: int = 256                  # the audit also follows this many of its uniform
                                               # states of C_h for audit_rollout_steps steps of the
                                               # mean policy under the ensemble's mean prediction and
                                               # audits the states of C_h they visit: a closed loop
                                               # that creeps out of C_h crosses its edge in a strip
                                               # too thin for uniform samples, which the adversary
                                               # missed too (Tilt seed 1, second freeze's tuning
                                               # runs); 0: off (the first freeze)
    audit_rollout_steps: int = 200             # steps of each audit rollout
    delivery_audit: int = 100000               # a certified pair becomes the run's best (what
                                               # final_policy: best delivers) only if a larger
                                               # audit finds no state with U > 0 (R.3) among this
                                               # many uniform states of C_h, up to this many of
                                               # its slabs and the closed loop from 1 in 100 of
                                               # the uniform ones over the spec's horizon, under
                                               # the pair's own model: 5x crabs verify's, which
                                               # a pair with a slab sliver can pass by luck at the
                                               # training audit's size (held-out planar_puck);
                                               # 0: off (the second freeze)
    audit_memory: int = 10000                  # every audit also re-checks up to this many of the
                                               # counter-examples audits found before (the newest;
                                               # the delivery audit's included), so one once found
                                               # blocks every later certification until h or the
                                               # policy changes there; 0: off (the third freeze)
    audit_train: str = "until_fixed"           # the audit's counter-examples are trained on until
                                               # none is left (or the step budget is spent); "once":
                                               # one step, then the adversary runs on (the fourth
                                               # freeze), which had just missed them: Tilt seed 0's
                                               # policies all failed Alg. 4's check (certify.py)

    def validate(self, where: str) -> None:
        if self.init not in ("rollout", "none", "handcrafted"):
            raise ValueError(f"{where}.init: must be 'rollout', 'none' or 'handcrafted', got {self.init!r}")
        if not self.learn and self.init != "handcrafted":
            raise ValueError(f"{where}.learn: false never trains h (no Alg. 1), so it needs {where}.init: "
                             f"handcrafted; init {self.init!r} starts an h that is not a certificate")
        if self.on_stuck not in ("rollback", "carry"):
            raise ValueError(f"{where}.on_stuck: must be 'rollback' or 'carry', got {self.on_stuck!r}")
        if self.regrow_accept not in ("always", "if_larger"):
            raise ValueError(f"{where}.regrow_accept: must be 'always' or 'if_larger', "
                             f"got {self.regrow_accept!r}")
        if self.audit_train not in ("until_fixed", "once"):
            raise ValueError(f"{where}.audit_train: must be 'until_fixed' or 'once', "
                             f"got {self.audit_train!r}")
        if self.regrow_mode not in ("rollouts", "dilate"):
            raise ValueError(f"{where}.regrow_mode: must be 'rollouts' or 'dilate', got {self.regrow_mode!r}")
        if not 0.0 < self.dilation < 1.0:
            raise ValueError(f"{where}.dilation: must be in (0, 1), got {self.dilation}")
        if self.edge_factor < 0:
            raise ValueError(f"{where}.edge_factor: must be >= 0, got {self.edge_factor}")
        if self.reg_states not in ("candidates", "certified", "visited"):
            raise ValueError(f"{where}.reg_states: must be 'candidates', 'certified' or 'visited', "
                             f"got {self.reg_states!r}")
        # a check with no quiet step, or a margin below 0, would certify by default
        if not self.quiet_steps >= 1:
            raise ValueError(f"{where}.quiet_steps: must be >= 1, got {self.quiet_steps}")
        if not self.eps >= 0:
            raise ValueError(f"{where}.eps: must be >= 0, got {self.eps}")


CHAINS_PER_DIM = 200
"""The adversary's pool grows with the state's dimension (``mala.chains: 0``): 400 chains in 2-D
and 800 in 4-D found a planted counter-example region of 1e-3 of C_h in 95-100% of placements on
their own (bench/adversary_power.py); the audit catches the rest."""


@dataclass
class MALAConfig:
    """The adversary's sampler (App. D, Alg. 5)."""

    chains: int = 0                            # the pool; 0: CHAINS_PER_DIM x the state's dimension
                                               # (400 in 2-D, 800 in 4-D); paper: 10000
    temperature: float = 0.03                  # release: T = 0.03 (paper: tau = 30 ~ 1/T)
    init_step: float = 0.01                    # in units of the state box's half-widths
    target_accept: float = 0.574               # paper: ~0.6; release: 0.574
    adapt_rate: float = 0.05                   # release: 0.01 in tau *= 1 + rate (accept - target)
    project_steps: int = 10                    # release: 10 gradient steps on relu(-h)
    project_lr: float = 0.01
    box_scale: float = 1.5                     # release: box = certified bounding box x 1.5
    box_samples: int = 20000                   # rejection samples used to re-box
    refresh_frac: float = 0.05                 # fraction of the chains re-drawn uniformly from C_h
                                               # at every step, so a small pool keeps covering all of
                                               # C_h while h changes (paper: 0, with 10000 chains)

    def pool(self, dim: int) -> int:
        """Chains of the adversary for states of dimension ``dim``."""
        return self.chains or CHAINS_PER_DIM * dim

    def validate(self, where: str) -> None:
        if not 0.0 <= self.refresh_frac <= 1.0:
            raise ValueError(f"{where}.refresh_frac: must be in [0, 1], got {self.refresh_frac}")


@dataclass
class SACConfig:
    """Constrained SAC (Sec. 4.4, App. B, Alg. 4)."""

    hidden: tuple[int, ...] = (64, 64)         # paper: (256, 256); release: (64, 64)
    critic_hidden: tuple[int, ...] = (128, 128)  # paper: (256, 256)
    act: str = "relu"
    lr: float = 3e-4                           # paper: 3e-4
    batch: int = 256                           # paper: 256
    gamma: float = 0.99                        # paper: 0.99
    tau: float = 0.005                         # paper: 0.005
    init_alpha: float = 0.1
    learn_alpha: bool = True                   # Eq. (12) (the paper's); false keeps alpha = init_alpha
    target_entropy: float | None = None        # None: -dim(A), the paper's choice
    big_c: float = 1000.0                      # release: C = 1000 in Q-hat
    clip_target: bool = False                  # clip Eq. (11)'s bootstrap to the soft values the
                                               # rewards seen allow (paper: no clip)
    steps_per_epoch: int = 2000                # paper: 2000
    adv_every: int = 4                         # an adversarial policy step every n SAC steps
    adv_coef: float = 1.0
    adv_anchor: float = 0.0                    # > 0: the stand-alone adversarial steps (Alg. 4 lines
                                               # 5-6 outside SAC) also pay this x the squared change
                                               # of the mean action on replay states; paper: none (0)
    model_horizon: int = 0                     # > 0: the policy loss also maximises the H-step return
                                               # of the mean policy through the ensemble's mean
                                               # prediction, sum_t gamma^t r(s_t) + gamma^H Q(s_H,
                                               # pi(s_H)) (needs System.reward); paper: none (0)
    model_batch: int = 64                      # start states (from the minibatch) of those rollouts
    model_start: str = "batch"                 # where they start: "batch" (minibatch states) or "s0"
                                               # (the system's s0, where every episode starts)
    model_every: int = 1                       # the model-based term enters every n-th SAC step
    model_masked: bool = False                 # true: the rollout ends with -C - U at its first step
                                               # with U > 0, like Eq. (10)'s Q-hat

    def validate(self, where: str) -> None:
        if self.model_every < 1:
            raise ValueError(f"{where}.model_every: must be >= 1, got {self.model_every}")
        if self.model_start not in ("batch", "s0"):
            raise ValueError(f"{where}.model_start: must be 'batch' or 's0', got {self.model_start!r}")
        if not self.adv_anchor >= 0:
            raise ValueError(f"{where}.adv_anchor: must be >= 0, got {self.adv_anchor}")


@dataclass
class ExploreConfig:
    """Safeguarded exploration (Alg. 3, App. C.2)."""

    n: int = 100                               # paper: 100 proposals
    noise_decay: bool = True                   # release: noise scale 1 -> 1e-3 over the proposals
    episodes_per_epoch: int = 1                # paper: 1; Swing 6 (here 2 + 2 uniform + 2 noisy)
    uniform_episodes: int = 0                  # Swing: 2 with uniform proposals
    noisy_episodes: int = 0                    # Swing: 2 with extra noise
    region_std: float = 0.0                    # > 0: Alg. 3 checks proposals with U over the members'
                                               # mean +- c sigma boxes; paper: the K means (0)
    min_std: float = 0.0                       # > 0: floor on pi_expl's pre-tanh noise scale in
                                               # Alg. 3's proposals; paper: none (0)
    min_std_from_epoch: int = 1                # the floor applies from this epoch on (1 = all)
    fallback: str = "lowest_U"                 # Alg. 3's safeguard when no proposal is certified:
                                               # "policy", pi(s) (paper), or "lowest_U": the first of
                                               # pi(s), the last certified policy's and the initial
                                               # policy's actions certified from s, else the
                                               # candidate with the lowest U
    guard_eval: bool = True                    # evaluation episodes act through the same guard
                                               # (paper: the mean policy, unchecked)
    stop_on_exit: bool = True                  # a real state outside C_h under a certified triple
                                               # ends the episode and the epoch's exploration (the
                                               # model is retrained on it and the triple re-checked
                                               # before the next real step); paper: no such response

    def validate(self, where: str) -> None:
        if self.fallback not in ("policy", "lowest_U"):
            raise ValueError(f"{where}.fallback: must be 'policy' or 'lowest_U', got {self.fallback!r}")
        if self.min_std_from_epoch < 1:
            raise ValueError(f"{where}.min_std_from_epoch: must be >= 1, got {self.min_std_from_epoch}")
        for name in ("region_std", "min_std"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")


class RunConfig:
    """What a run's whole config (CRABS's :class:`Config`, the baselines' ``BaselineConfig``) can do:
    be built from a plain dict (strictly), turned back into one, and copied with changes."""

    @classmethod
    def from_dict(cls, data: dict):
        return _build(cls, data, "config")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def replace(self, **changes):
        """A copy with ``changes`` (nested dicts for sections) merged in, checked like a new config."""
        d = self.to_dict()
        _deep_update(d, changes)
        return type(self).from_dict(d)


@dataclass
class Config(RunConfig):
    task: str = "upright"
    seed: int = 0
    epochs: int = 40
    init_episodes: int = 5                     # safe start-up episodes of the initial policy
    init_noise: float = 0.1                    # action noise of those episodes, applied only while
    init_noise_region: float = 0.15            # every coordinate is within this fraction of the state
                                               # box's half-width of its centre; outside it the
                                               # initial policy acts alone
    eval_every: int = 1                        # epochs between evaluations of the mean policy
    final_policy: str = "best"                 # the policy the run delivers (policy.pt, the final
                                               # evaluation): "best", the certified (policy, h) pair
                                               # with the highest evaluation return so far, or
                                               # "last", the policy of the last epoch (paper)
    checkpoint_every: int = 1
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    barrier: BarrierConfig = field(default_factory=BarrierConfig)
    mala: MALAConfig = field(default_factory=MALAConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)

    def validate(self, where: str) -> None:
        if self.final_policy not in ("best", "last"):
            raise ValueError(f"{where}.final_policy: must be 'best' or 'last', got {self.final_policy!r}")
        for key in ("init_noise", "init_noise_region"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _deep_update(d: dict, changes: dict) -> None:
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            _deep_update(d[k], v)
        else:
            d[k] = v


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except (TypeError, ValueError):
                pass
        raise ValueError(f"{where}: {value!r} is not a valid {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item, _) = typing.get_args(tp)
        return tuple(_coerce(item, v, f"{where}[]") for v in value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        v = float(value)
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return v
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported type {tp}")


def _build(cls, data: dict, where: str):
    """``cls`` from ``data``: unknown keys and wrong types refused, then the generic checks and the
    section's own ``validate(where)``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    _check_generic(obj, where)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def _check_generic(obj, where: str) -> None:
    """Checks every section shares: integers (but ``seed``) are counts, so >= 0; ``*hidden`` tuples
    are layer sizes, so > 0."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, int) and not isinstance(v, bool) and f.name != "seed" and v < 0:
            raise ValueError(f"{where}.{f.name}: must be >= 0, got {v}")
        if isinstance(v, tuple) and f.name.endswith("hidden") and any(h <= 0 for h in v):
            raise ValueError(f"{where}.{f.name}: layer sizes must be positive, got {list(v)}")


RETIRED = frozenset({"dynamics.holdout"})
"""Dotted keys crabs no longer has (``dynamics.holdout``: never read). Old run folders still hold
them in their config.yaml; a user's own YAML file or ``--set`` naming one is refused like any
unknown key."""


def drop_retired(data: dict) -> dict:
    """A copy of ``data`` (a run folder's saved config) without the ``RETIRED`` keys, so runs written
    by an older crabs still resume and verify."""
    data = copy.deepcopy(data)
    for key in RETIRED:
        *sections, name = key.split(".")
        node = data
        for sec in sections:
            node = node.get(sec) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return data


def nest(key: str, value: typing.Any) -> dict:
    """A dotted key and its value as a nested dict: ``nest("sac.tau", 0.01) == {"sac": {"tau": 0.01}}``
    (ValueError for an empty part, e.g. ``sac..tau``)."""
    path = key.strip().split(".")
    if not all(path):
        raise ValueError(f"bad key {key!r}: expected dotted keys, e.g. sac.tau")
    for name in reversed(path):
        value = {name: value}
    return value


def parse_overrides(items: Sequence[str]) -> dict:
    """``--set`` items (``KEY=VALUE``, dotted keys, e.g. ``sac.tau=0.01``) as a nested dict to overlay
    on a config, each value parsed as YAML (0.01 a number, true a bool, [32, 32] a list, text a
    string); later items win. Keys and types are not checked here: the overlay goes through
    ``from_dict`` like a YAML file, so a bad key or value gets the same error there."""
    out: dict = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not all(key.strip().split(".")):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (dotted keys, e.g. sac.tau=0.01)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"--set {item!r}: the value is not valid YAML") from None
        _deep_update(out, nest(key, value))
    return out


CONFIG_DIR = Path(__file__).parent / "configs"


def read_yaml_mapping(path: str | Path) -> dict:
    """A user's YAML config file as a dict, with a one-line error if it is missing, not YAML or not
    a mapping."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping")
    return data


def load_config(path: str | Path | None = None, task: str | None = None,
                overrides: dict | None = None) -> Config:
    """The task's default config (``crabs/configs/<task>.yaml``), overlaid with the YAML file ``path``
    if given, then with ``overrides`` (nested, e.g. from ``parse_overrides``), which may not name the
    task when ``task`` is given."""
    from crabs.envs import get_task

    data: dict = {}
    if task is not None:
        task = get_task(task).name
        default = CONFIG_DIR / f"{task}.yaml"
        if default.exists():
            data = yaml.safe_load(default.read_text()) or {}
        data["task"] = task
    if path is not None:
        user = read_yaml_mapping(path)
        if task is not None and "task" in user and get_task(user["task"]).name != task:
            raise ValueError(f"config file is for task {user['task']!r}, not {task!r}")
        _deep_update(data, user)
    if overrides:
        if task is not None and "task" in overrides:
            raise ValueError(f"--set task: the task is {task!r}, given by --task, not by --set")
        _deep_update(data, overrides)
    cfg = Config.from_dict(data)
    get_task(cfg.task)
    return cfg


PAPER = {
    "dynamics.hidden": (400, 400, 400, 400), "dynamics.steps_per_epoch": 1000,
    "dynamics.init_steps": 20000, "barrier.hidden": (256, 256), "barrier.max_steps": 20000,
    "barrier.quiet_steps": 5000, "mala.chains": 10000, "mala.adapt_rate": 0.01, "sac.hidden": (256, 256),
    "sac.critic_hidden": (256, 256), "barrier.regrow": False, "barrier.box_barrier": False,
    "final_policy": "last", "dynamics.saturate_actions": False,
    "mala.init_step": 1e-3, "barrier.audit": False, "barrier.edge_factor": 0.0, "mala.refresh_frac": 0.0,
    "explore.fallback": "policy", "explore.guard_eval": False, "explore.stop_on_exit": False,
    "barrier.reg_coef": 0.001, "barrier.reg_states": "candidates", "barrier.train_margin": 0.0,
    "barrier.on_stuck": "rollback", "barrier.eps": 0.01, "barrier.delivery_audit": 0,
    "barrier.audit_memory": 0,
}
"""Where the default departs from the paper (value = the paper's). See docs/config.md."""
