"""The baselines' configuration (Sec. 6, App. C.3): one typed object per run, strict like
:class:`crabs.config.Config`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from crabs.config import RunConfig, SACConfig, _deep_update, read_yaml_mapping
from crabs.envs import get_task

ALGORITHMS = ("sac", "cpo", "recovery_rl", "sqrl")

BUDGET = {"upright": 8000, "tilt": 8000, "move": 90000, "swing": 290000}
"""Default online real steps per task: about what the task's default CRABS run takes, counted from
its protocol (the start-up episodes and evaluation, then per epoch its exploration episodes and one
evaluation, each at most the horizon, and the final evaluation): Upright 7,800, Tilt 7,800, Move
87,000 and Swing 287,000 when no episode ends early."""


PAPER_STEPS = 1_000_000
"""The baselines' online real steps in the paper (Sec. 6: 10^6 for every task)."""


def budget_steps(budget: str, task: str) -> int:
    """A baseline's online real steps on built-in ``task`` under ``budget``: ``"crabs"`` (the task's
    :data:`BUDGET`, about a CRABS run's env steps), ``"paper"`` (:data:`PAPER_STEPS`) or ``"<k>x"``
    (k times the task's BUDGET, e.g. ``"3x"``)."""
    name = get_task(task).name
    if name not in BUDGET:
        raise ValueError(f"task {task!r} has no default budget: give the baselines' steps instead")
    if budget == "crabs":
        return BUDGET[name]
    if budget == "paper":
        return PAPER_STEPS
    m = re.fullmatch(r"(\d+(?:\.\d*)?)x", str(budget))
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"budget must be 'crabs', 'paper' or a positive multiple of the CRABS budget "
                         f"such as '3x', got {budget!r}")
    return max(1, round(float(m.group(1)) * BUDGET[name]))

PENALTY: dict[str, float | None] = {"sac": 30.0, "cpo": None, "recovery_rl": None, "sqrl": None}
"""Default violation penalty per algorithm: SAC 30 (App. C.3); the others add none (RecoveryRL "without
the violation penalty", SQRL with RecoveryRL's settings, CPO constrains violations instead), i.e.
they learn from the environment's own reward at a violation (the built-in tasks': -30)."""

FROM_INITIAL = {"sac": True, "cpo": True, "recovery_rl": False, "sqrl": False}
"""Whether the task policy starts as the safe initial policy (Sec. 6: "SAC and CPO are given an
initial safe policy ..., while RecoveryRL and SQRL are given offline data")."""


@dataclass
class RiskConfig:
    """The safety critic Q_risk of RecoveryRL and SQRL and the offline data they are given (App. C.3)."""

    eps: float = 0.5              # paper: eps_risk 0.5 (chosen from 0.1, 0.3, 0.5, 0.7)
    gamma: float = 0.6            # paper: gamma_risk 0.6 (chosen from 0.8, 0.7, 0.6, 0.5)
    offline_random: int = 20000   # paper: 20K transitions of a random policy ...
    offline_initial: int = 20000  # ... and 20K of the initial safe policy (here counted, see above)
    pretrain_steps: int = 3000    # Q_risk (and recovery policy) updates on the offline data
    hidden: tuple[int, ...] = (128, 128)  # RecoveryRL: 256 x 256
    lr: float = 3e-4
    tau: float = 0.005
    batch: int = 256
    nu: float = 30.0              # SQRL's Lagrange multiplier on Q_risk (paper: 30, from 3 ... 300)
    samples: int = 100            # SQRL: actions drawn from pi until one has Q_risk <= eps

    def validate(self, where: str) -> None:
        if not 0 < self.gamma < 1 or not 0 < self.eps < 1:
            raise ValueError(f"{where}.gamma and {where}.eps must lie in (0, 1)")
        for name in ("batch", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class CPOConfig:
    """Constrained Policy Optimization (Achiam et al., 2017; App. C.3)."""

    batch: int = 0                # real steps per CPO step; 0: 1000 for 2-D states (Upright, Tilt),
                                  # 5000 otherwise (the paper's reduced batches, from 50000)
    step_size: float = 0.01       # delta, the KL trust region (the paper tried 0.005-0.05: no difference)
    cost_limit: float = 0.0       # d: violations per trajectory allowed (not given; 0 = none)
    gae_lambda: float = 0.95
    cg_iters: int = 10
    damping: float = 0.1
    backtrack_iters: int = 10
    backtrack_ratio: float = 0.8
    vf_hidden: tuple[int, ...] = (64, 64)
    vf_lr: float = 1e-3
    vf_iters: int = 80

    def validate(self, where: str) -> None:
        if not self.step_size > 0 or not 0 < self.backtrack_ratio < 1 or self.cost_limit < 0:
            raise ValueError(f"{where}: step_size must be > 0, backtrack_ratio in (0, 1), cost_limit >= 0")


@dataclass
class BaselineConfig(RunConfig):
    """One baseline run. ``sac`` holds the SAC hyperparameters of the task policy (the same defaults
    as CRABS's policy optimiser; its constraint-only keys ``big_c``, ``adv_*``, ``model_*`` play no
    part); ``risk`` is read by RecoveryRL and SQRL only, ``cpo`` by CPO only (which uses ``sac``'s
    policy shape and gamma)."""

    algorithm: str = "sac"        # "sac" (penalty), "cpo", "recovery_rl", "sqrl"
    task: str = "upright"
    seed: int = 0
    total_steps: int = 0          # online real steps; 0: the task's BUDGET (about a CRABS run's)
    penalty: float | None = None  # a number: a violating step is stored with reward -penalty
                                  # (terminal); unset: PENALTY[algorithm], where None keeps the
                                  # environment's own reward there (built-in tasks: -30)
    eval_every: int = 1000        # the learner's real steps between evaluations of the mean policy
                                  # (each taken at the end of an episode; its steps count towards
                                  # the budget, not towards the next evaluation)
    warmup: int = 1000            # transitions in the buffer before the first SAC update
    updates_per_step: int = 1     # SAC updates per real step
    from_initial: bool | None = None  # the task policy starts as the task's safe initial policy;
                                      # None: FROM_INITIAL[algorithm] (the paper's choice)
    sac: SACConfig = field(default_factory=SACConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    cpo: CPOConfig = field(default_factory=CPOConfig)

    def validate(self, where: str) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"{where}.algorithm: must be one of {', '.join(ALGORITHMS)}, "
                             f"got {self.algorithm!r}")
        if self.penalty is not None and self.penalty < 0:
            raise ValueError(f"{where}.penalty: must be >= 0, got {self.penalty}")
        for name in ("eval_every", "updates_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.sac.model_horizon:  # SACConfig allows it; the baselines' use of SAC does not
            raise ValueError(f"{where}.sac.model_horizon: the baselines have no dynamics model (use 0)")

    @property
    def steps(self) -> int:
        """Online real steps to take: ``total_steps``, or the built-in task's BUDGET."""
        steps = self.total_steps or BUDGET.get(self.task, 0)
        if steps <= 0:
            raise ValueError(f"config.total_steps: {self.task!r} is not a built-in task, so give the "
                             "number of real steps to take")
        return steps

    @property
    def violation_penalty(self) -> float | None:
        """The penalty in force; None: the environment's own reward at a violation."""
        return PENALTY[self.algorithm] if self.penalty is None else self.penalty

    def reward(self, r: float, cost: float) -> float:
        """The reward a step is learned from: -penalty at a violation, if a penalty is in force."""
        pen = self.violation_penalty
        return -pen if cost and pen is not None else r

    @property
    def start_from_initial(self) -> bool:
        return FROM_INITIAL[self.algorithm] if self.from_initial is None else self.from_initial


def load_baseline_config(algorithm: str, path: str | Path | None, task: str, overrides: dict | None = None,
                         **kw) -> BaselineConfig:
    """``algorithm``'s defaults for built-in ``task``, overlaid with the YAML file ``path`` (if
    given), then with ``overrides`` (nested, e.g. from ``crabs.config.parse_overrides``; they may not
    name the task or algorithm), then with the keywords ``kw`` that are not None (e.g. seed,
    total_steps)."""
    data: dict = {}
    if path is not None:
        data = read_yaml_mapping(path)
        if data.get("algorithm", algorithm) != algorithm:
            raise ValueError(f"config file {str(path)!r} is for {data['algorithm']!r}, not {algorithm!r}")
    task = get_task(task).name
    if "task" in data and get_task(data["task"]).name != task:
        raise ValueError(f"config file is for task {data['task']!r}, not {task!r}")
    if overrides:
        for key, value, given in (("task", task, "--task"), ("algorithm", algorithm, "the command line")):
            if key in overrides:
                raise ValueError(f"--set {key}: the {key} is {value!r}, given by {given}, not by --set")
        _deep_update(data, overrides)
    data.update({"task": task, "algorithm": algorithm})
    data.update({k: v for k, v in kw.items() if v is not None})
    return BaselineConfig.from_dict(data)
