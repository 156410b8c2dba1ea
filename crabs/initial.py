"""Safe initial policies (the paper's given pi_init, Sec. 2.1 and Appendix C.2).

The paper obtained its initial policy from a SAC run whose violations it does not count. We make
one instead, without touching the environment: a simple stabilising controller designed on the
task's known linearisation (PD gains for the pendulum; discrete LQR on the MuJoCo model's
finite-difference linearisation for the cart-pole) is distilled into the policy network that SAC
trains (tanh-Gaussian MLP), by regression on states drawn from the safe box. The controllers are
deliberately low-reward (Upright: a sluggish return to 0; Tilt: holds upright; Move: stays near
x = 0; Swing: keeps the pole still) but safe.

Regenerate the shipped weights with ``crabs make-initial`` (or ``python -m crabs.initial``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from crabs.envs import get_task
from crabs.envs import pendulum as pend
from crabs.nets import TanhGaussianPolicy
from crabs.rollout import mean_actor, run_episode
from crabs.states import uniform

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_HIDDEN = (64, 64)
# Pendulum: a = clip(-(K theta + D theta_dot)); closed loop theta'' = (15 - 6K) theta - 6D theta',
# a slow overdamped mode (about 3 s): the return from s0 is about -1.1 (best safe: -0.216).
PEND_K, PEND_D = 2.8, 1.0
# Cart-pole LQR weights on [x, theta, x_dot, theta_dot] and on the motor control (in [-1, 1]).
LQR_Q, LQR_R = (1.0, 1.0, 0.1, 0.1), 1.0
INIT_LOG_STD = -1.0  # exploration std of pi_expl before training: exp(-1) = 0.37 in pre-tanh units


def _cartpole_model_step():
    """One 0.04 s step of the MuJoCo cart-pole model on a private MjData: s, ctrl -> s'."""
    import mujoco

    from crabs.envs.cartpole import CartPoleTaskEnv

    env = CartPoleTaskEnv("move")
    m, d = env.model, mujoco.MjData(env.model)
    frame_skip = env.frame_skip
    env.close()

    def f(s: np.ndarray, ctrl: float) -> np.ndarray:
        d.qpos[:], d.qvel[:], d.ctrl[:] = s[:2], s[2:], ctrl
        for _ in range(frame_skip):
            mujoco.mj_step(m, d)
        return np.concatenate([d.qpos, d.qvel])

    return f


@lru_cache(maxsize=1)
def cartpole_lqr_gain() -> np.ndarray:
    """Discrete LQR gain on the finite-difference linearisation of the cart-pole at rest."""
    import scipy.linalg

    f = _cartpole_model_step()
    s0, eps = np.zeros(4), 1e-5
    A = np.stack([(f(s0 + eps * e, 0.0) - f(s0 - eps * e, 0.0)) / (2 * eps) for e in np.eye(4)], 1)
    B = ((f(s0, eps) - f(s0, -eps)) / (2 * eps)).reshape(4, 1)
    Q, R = np.diag(LQR_Q), np.array([[LQR_R]])
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    return np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A).reshape(4)


def controller(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """The hand-made stabilising controller for a built-in task: states (..., d) -> actions (..., 1)."""
    name = get_task(task).name
    if name in ("upright", "tilt"):
        return lambda s: np.clip(-(PEND_K * s[..., :1] + PEND_D * s[..., 1:2]), -1.0, 1.0)
    k = cartpole_lqr_gain()
    # motor control u = -K s in [-1, 1]; the env applies clip(3a, -1, 1), so a = u / 3
    return lambda s: np.clip(-(s @ k), -1.0, 1.0)[..., None] / 3.0


def _probe_states(low: np.ndarray, high: np.ndarray, n: int = 16) -> np.ndarray:
    """``n`` fixed states spread over the box [low, high] (its centre, its two extreme corners and a
    deterministic low-discrepancy scatter): no random number is drawn, so probing a controller
    leaves every seeded draw of :func:`distill` as it was."""
    i = np.arange(n - 3, dtype=np.float64)[:, None]
    j = np.arange(len(low), dtype=np.float64)[None, :]
    frac = np.concatenate([np.full((1, len(low)), 0.5), np.zeros((1, len(low))), np.ones((1, len(low))),
                           np.mod(0.5 + (i + 1) * np.sqrt(2.0 + j), 1.0)])
    return low + frac * (high - low)


def _controller_actions(control: Callable[[np.ndarray], np.ndarray], s: np.ndarray,
                        act_dim: int | None = None) -> np.ndarray:
    """``control(s)`` for states ``s`` (n, d) as an (n, k) float64 array; a 1-D output (n,) is one
    action. A ValueError (one line) for any other shape, a non-finite value or, once the action
    dimension is known, another number of actions."""
    n = len(s)
    raw = control(s)
    try:
        out = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"the controller must return an array of numbers, "
                         f"got {type(raw).__name__}") from None
    if out.ndim == 1 and out.shape == (n,):
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] != n or out.shape[1] == 0:
        raise ValueError(f"the controller must map states of shape ({n}, {s.shape[1]}) to actions of shape "
                         f"({n}, k) (or ({n},) for one action), got shape {out.shape}")
    if act_dim is not None and out.shape[1] != act_dim:
        raise ValueError(f"the controller returned {out.shape[1]} actions per state, "
                         f"earlier {act_dim}")
    if not np.isfinite(out).all():
        bad = s[~np.isfinite(out).all(axis=1)][0]
        raise ValueError(f"the controller returned a non-finite action (e.g. at state "
                         f"{np.round(bad, 4).tolist()}); actions must be finite, in [-1, 1]")
    return out


def distill(control: Callable[[np.ndarray], np.ndarray], low: np.ndarray, high: np.ndarray,
            hidden: Sequence[int] = DEFAULT_HIDDEN, act: str = "relu", steps: int = 4000,
            batch: int = 1024, seed: int = 0) -> TanhGaussianPolicy:
    """Fit tanh(mu(s)) to ``control(s)`` on states uniform in [low, high] (half the batch) and
    Gaussian around the box's centre (the other half, for precision where the policy will live;
    the built-in boxes are centred on 0); log sigma is
    fitted to the constant INIT_LOG_STD. Pure regression: no environment is touched.

    ``control`` maps a batch of float64 states (n, d) to actions (n, k): the policy gets k actions
    (a 1-D output (n,) is one action). Actions should lie in [-1, 1]; finite values beyond are
    clipped (the policy's tanh cannot reach them), a non-finite one or an output of another shape
    raises ValueError. The controller is first called once on fixed probe states of the box (no
    random draw), so a one-action distillation is the same, weight for weight, as before."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if low.ndim != 1 or low.shape != high.shape:
        raise ValueError(f"low and high must be 1-D arrays of one length, "
                         f"got shapes {low.shape} and {high.shape}")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (high >= low).all()):
        raise ValueError(f"the box [low, high] must be finite with high >= low, got {low} and {high}")
    dim = len(low)
    act_dim = _controller_actions(control, _probe_states(low, high)).shape[1]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    policy = TanhGaussianPolicy(dim, act_dim, hidden, act)
    lo, hi = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    centre = (lo + hi) / 2   # exactly 0 for a symmetric box: the samples are then as they always were
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        u = uniform(lo, hi, batch // 2, gen)
        g = centre + 0.1 * (hi - lo) * torch.randn(batch - batch // 2, dim, generator=gen)
        s = torch.cat([u, g])
        a = _controller_actions(control, s.double().numpy(), act_dim)
        target = torch.as_tensor(a, dtype=torch.float32)
        target = target.clamp(-0.995, 0.995)
        mu, log_std = policy(s)
        loss = ((torch.tanh(mu) - target) ** 2).mean() + 1e-2 * ((log_std - INIT_LOG_STD) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return policy.eval()


def distill_task(task: str, hidden: Sequence[int] = DEFAULT_HIDDEN, act: str = "relu",
                 seed: int = 0, steps: int = 4000) -> TanhGaussianPolicy:
    t = get_task(task)
    low, high = t.box()
    return distill(controller(t.name), low, high, hidden, act, steps=steps, seed=seed)


def policy_path(task: str) -> Path:
    return DATA_DIR / f"initial_{get_task(task).name}.pt"


def save_policy(policy: TanhGaussianPolicy, path: str | Path, state: dict | None = None, **meta) -> None:
    """A policy file: the network's shape, its weights (or ``state``, weights of the same shape) and
    ``meta``; :func:`load_policy` reads it without unpickling anything."""
    torch.save({"spec": policy.spec(), "state_dict": policy.state_dict() if state is None else state,
                "meta": meta}, path)


def load_policy(path: str | Path) -> tuple[TanhGaussianPolicy, dict]:
    """Load a policy saved by :func:`save_policy` (weights only: nothing is unpickled)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    spec = blob["spec"]
    policy = TanhGaussianPolicy(spec["obs_dim"], spec["act_dim"], spec["hidden"], spec["act"])
    policy.load_state_dict(blob["state_dict"])
    return policy.eval(), blob.get("meta", {})


def initial_policy(task: str, hidden: Sequence[int] = DEFAULT_HIDDEN,
                   act: str = "relu") -> TanhGaussianPolicy:
    """The shipped safe initial policy of a built-in task; a policy of another shape is distilled
    on the spot from the same controller (a few seconds)."""
    path = policy_path(task)
    if path.exists():
        policy, meta = load_policy(path)
        if list(policy.hidden) == list(hidden) and policy.act == act:
            return policy
    return distill_task(task, hidden, act)


class ModelEnv(gym.Env):
    """A built-in task's *model* (the pendulum equations or a private MuJoCo state) as an episode:
    reward r(s), and the episode ends when a state leaves the safe set. No real environment is
    touched, so :func:`crabs.rollout.run_episode` may step it without a monitor (``is_model``)."""

    is_model = True

    def __init__(self, task: str, start=None):
        self.task = get_task(task)
        self.start = self.task.spec.s0_array() if start is None else np.asarray(start, dtype=np.float64)
        if self.task.name in ("upright", "tilt"):
            self.f = pend.pendulum_step
        else:
            f = _cartpole_model_step()
            self.f = lambda s, a: f(s, float(np.clip(3 * a[0], -1, 1)))
        self.s = self.start

    def reset(self, *, seed=None, options=None):
        self.s = self.start
        return self.s, {}

    def step(self, action):
        r = float(self.task.reward(self.s))
        self.s = self.f(self.s, action)
        safe = bool(self.task.spec.is_safe(self.s))
        return self.s, r, not safe, False, {"cost": float(not safe)}


def rollout_model(task: str, policy: TanhGaussianPolicy, start=None) -> tuple[float, bool, np.ndarray]:
    """Roll the mean policy out on the task's *model* (:class:`ModelEnv`), not the environment, for
    the task's horizon: (return, stayed safe, states), the return -30 lower if it left the safe
    set. Used to check a distillation."""
    ep = run_episode(ModelEnv(task, start), mean_actor(policy), max_steps=get_task(task).spec.horizon)
    return (ep.ret - 30.0 if ep.violated else ep.ret), not ep.violated, ep.states


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crabs make-initial",
                                description="Regenerate the shipped safe initial policies.")
    p.add_argument("--task", action="append", help="task(s) to regenerate (default: all)")
    p.add_argument("--out", default=str(DATA_DIR), help="output folder")
    args = p.parse_args(argv)
    from crabs.envs import TASKS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.task or list(TASKS):
        policy = distill_task(name)
        ret, safe, _ = rollout_model(name, policy)
        if not safe:
            raise SystemExit(f"distilled {name} policy is unsafe on the model; not saved")
        save_policy(policy, out / f"initial_{get_task(name).name}.pt", task=get_task(name).name,
                    controller="PD" if name in ("upright", "tilt") else "LQR", model_return=ret)
        print(f"{name}: model return {ret:.3f}, safe -> {out / f'initial_{name}.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
