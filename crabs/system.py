"""A system CRABS can train on: a Gymnasium environment, its safety spec, a safe initial policy
and a bounding box of the states worth certifying. Built-in tasks and user systems alike."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from crabs.envs import SafetySpec, get_task
from crabs.nets import TanhGaussianPolicy

START_TOL = 1e-5   # how far (per unit of the state box's width) a reset may land from s0: float32 rounding


@dataclass
class System:
    """Everything CRABS needs to know about a system.

    Args:
        name: a label (used in run folders and checkpoints; a checkpoint of another system is refused).
        make_env: builds the real environment (it is wrapped in the safety monitor by CRABS).
        spec: the safe set, s0 and horizon.
        initial_policy: a safe (certifiable) initial policy, a TanhGaussianPolicy.
        state_low, state_high: the box in which the adversary searches and certificates are drawn;
            constrained coordinates should match the safe set, free ones (speeds) a generous bound.
        reward: optional r(s), for ground-truth checks; training uses the env's rewards, except
            ``sac.model_horizon > 0``, which rolls r out through the model (then it must also work
            on torch tensors, as the built-in rewards do).
        action_bound: optional known actuator saturation: actions beyond +-action_bound act on the
            plant as +-action_bound (the built-in cart-poles: 1/3, their control is clip(3a, -1, 1)).
            With ``dynamics.saturate_actions`` the dynamics model sees the clipped action.
    """

    name: str
    make_env: Callable[[], gym.Env]
    spec: SafetySpec
    initial_policy: TanhGaussianPolicy
    state_low: np.ndarray
    state_high: np.ndarray
    reward: Callable[[np.ndarray], np.ndarray] | None = None
    action_bound: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.initial_policy, TanhGaussianPolicy):
            raise TypeError(f"initial_policy must be a crabs.nets.TanhGaussianPolicy, got "
                            f"{type(self.initial_policy).__name__}: turn a controller (a NumPy function "
                            f"of the state) into one with crabs.initial.distill(controller, state_low, "
                            f"state_high)")
        if self.action_bound is not None and not (0 < self.action_bound <= 1):
            raise ValueError(f"action_bound must lie in (0, 1] (actions live in [-1, 1]), "
                             f"got {self.action_bound}")
        self.state_low = np.asarray(self.state_low, dtype=np.float64)
        self.state_high = np.asarray(self.state_high, dtype=np.float64)
        d = self.spec.dim
        if self.state_low.shape != (d,) or self.state_high.shape != (d,):
            raise ValueError(f"state_low/state_high must have shape ({d},)")
        if not np.all(self.state_high > self.state_low):
            raise ValueError("state_high must exceed state_low in every coordinate")
        s0 = self.spec.s0_array()
        if not np.all((s0 >= self.state_low) & (s0 <= self.state_high)):
            raise ValueError("s0 lies outside the state box")
        centre, half = (self.state_high + self.state_low) / 2, (self.state_high - self.state_low) / 2
        edge = np.abs(s0 - centre) / half > 1 - self.spec.margin
        if edge.any():   # the certificate's box term (barrier.box_barrier) is >= 1 there: h(s0) < 0
            names = ", ".join(f"{self.spec.state_names[i]} = {s0[i]:.4g} in [{self.state_low[i]:.4g}, "
                              f"{self.state_high[i]:.4g}]" for i in np.flatnonzero(edge))
            warnings.warn(f"s0 lies on the state box's edge ({names}): the certificate keeps C_h inside "
                          f"the box by the spec's margin ({self.spec.margin:g} of each half-width), so s0 "
                          "falls outside C_h and R.1 fails at s0 (crabs verify reports it); widen the state "
                          "box beyond s0", UserWarning, stacklevel=3)
        if self.initial_policy.obs_dim != d:
            raise ValueError(f"initial policy expects {self.initial_policy.obs_dim}-D states, spec has {d}")

    def make_checked_env(self) -> gym.Env:
        """``make_env()``'s environment, checked (:meth:`check_env`) before any step; closed if it
        fails the check."""
        env = self.make_env()
        try:
            self.check_env(env)
        except Exception:
            env.close()
            raise
        return env

    def make_monitored_env(self, *, ledger=None, counters=None, tag: str = ""):
        """The checked environment (:meth:`make_checked_env`) behind a safety monitor that also
        refuses a reset that does not give s0 (:meth:`check_start`): how a run gets its real steps."""
        from crabs.envs import SafetyMonitor

        return SafetyMonitor(self.make_checked_env(), self.spec, ledger=ledger, counters=counters, tag=tag,
                             start_check=self.check_start)

    def check_env(self, env: gym.Env) -> None:
        """The environment ``make_env`` built, checked against what CRABS assumes before any step
        is taken: observations are the spec's states (shape (d,)), and actions are a Box of the
        initial policy's size that holds [-1, 1], where CRABS's policies act (ValueError otherwise).
        A Box wider than [-1, 1] is allowed with a warning: only [-1, 1] of it is used. No reset is
        made here: that a reset gives s0 is checked on the real resets (:meth:`check_start`)."""
        d, k = self.spec.dim, self.initial_policy.act_dim
        obs, act = env.observation_space, env.action_space
        if getattr(obs, "shape", None) != (d,):
            raise ValueError(f"{self.name}: the environment's observation space is {obs}, but the "
                             f"observation must be the state, {d} coordinates {list(self.spec.state_names)}")
        if not isinstance(act, gym.spaces.Box) or act.shape != (k,):
            raise ValueError(f"{self.name}: the environment's action space is {act}, but the initial policy "
                             f"gives {k} action(s) in [-1, 1] (a Box of shape ({k},))")
        low, high = np.asarray(act.low, dtype=np.float64), np.asarray(act.high, dtype=np.float64)
        bounds = f"low {low.tolist()}, high {high.tolist()}"
        if np.any(low > -1) or np.any(high < 1):
            raise ValueError(f"{self.name}: the environment's action Box ({bounds}) does not hold [-1, 1], "
                             f"where CRABS's policies act: build the environment as "
                             f"gymnasium.wrappers.RescaleAction(env, -1.0, 1.0) in make_env")
        if np.any(low < -1) or np.any(high > 1):
            hint = ("; to use the whole range, build it as gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)"
                    if np.isfinite(low).all() and np.isfinite(high).all() else "")
            warnings.warn(f"{self.name}: the environment's action Box ({bounds}) is wider than [-1, 1]; "
                          f"CRABS's policies act in [-1, 1] only{hint}", stacklevel=2)

    def check_start(self, start) -> None:
        """A reset's observation, checked to be s0 to float32 precision of the state box (ValueError
        otherwise): the certificate is anchored at s0 and the guarantee is for episodes from s0.
        The run's safety monitor calls it on every reset (``SafetyMonitor(start_check=...)``), so
        that no reset is made outside the monitor to check it."""
        start = np.asarray(start, dtype=np.float64).reshape(-1)
        s0, tol = self.spec.s0_array(), START_TOL * (self.state_high - self.state_low)
        if start.shape != s0.shape or np.any(np.abs(start - s0) > tol):
            raise ValueError(f"{self.name}: the environment's reset gives {start.tolist()}, but episodes "
                             f"must start at the spec's s0 {s0.tolist()} (CRABS's certificate and its "
                             "guarantee are for episodes from s0): turn the reset's noise off or set "
                             "SafetySpec.s0")


def make_model(system: System, cfg):
    """The calibrated ensemble (Sec. 4.3) for ``system`` under a CRABS ``Config``: it sees saturated
    actions where the system declares a saturation and ``dynamics.saturate_actions`` is on."""
    from crabs.dynamics import Ensemble

    model = Ensemble(system.spec.dim, system.initial_policy.act_dim, cfg.dynamics)
    if cfg.dynamics.saturate_actions:
        model.action_bound = system.action_bound
    return model


def make_barrier(system: System, cfg):
    """The certificate h (Sec. 3) for ``system``'s state box under a CRABS ``Config``: the learned
    ``Barrier``, or with ``barrier.learn: false`` the fixed ``HandcraftedBarrier`` (built at start-up,
    crabs/handcrafted.py)."""
    from crabs.handcrafted import barrier_type

    return barrier_type(cfg.barrier).for_box(system.spec, cfg.barrier, system.state_low, system.state_high)


def builtin_system(task: str, hidden=(64, 64), act: str = "relu", **env_kwargs) -> System:
    from crabs.initial import initial_policy

    t = get_task(task)
    low, high = t.box()
    bound = t.action_bound
    if bound is not None and "max_ctrl" in env_kwargs:  # the cart-poles' saturation moves with it
        from crabs.envs.cartpole import action_bound

        bound = action_bound(float(env_kwargs["max_ctrl"]))
    return System(t.name, lambda: gym.make(t.env_id, disable_env_checker=True, **env_kwargs), t.spec,
                  initial_policy(t.name, hidden, act), low, high, t.reward, bound)


def load_system(ref: str) -> System:
    """A user's System from the command line: ``"package.module"`` calls the module's
    ``make_system()``, ``"package.module:function"`` that function (e.g.
    ``crabs.examples.lane_car``). One-line errors for a module or function that is not there, or a
    function that does not return a System."""
    import importlib

    module_name, _, attr = ref.partition(":")
    attr = attr or "make_system"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"--system {ref!r}: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--system {ref!r}: {module_name!r} has no function {attr!r} "
                         "(give MODULE:FUNCTION returning a crabs.system.System)")
    system = fn()
    if not isinstance(system, System):
        raise ValueError(f"--system {ref!r}: {attr}() returned a {type(system).__name__}, not a System")
    return system
