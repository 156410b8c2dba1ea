"""``crabs render``: a short animation of a CRABS run's delivered policy from s0, with the
certificate's margin h(s_t) drawn along the way, so one can see the policy at work and how close it
comes to the edge of the certified set C_h = {s : h(s) >= 0}.

The episode is a real one, so it is counted like every other: it goes through a safety monitor
writing its own ledger (``RUN/render/ledger.jsonl``, tag ``render``; its counts continue across
renders, as ``crabs verify``'s audit ledger does), apart from the run's own counts. The pictures are
drawn afterwards from the recorded states (drawing a state is not a step), ``frames`` of them
sub-sampled evenly from s_0 ... s_T:

* Upright, Tilt: the pendulum drawn with matplotlib, a pole from the pivot at angle theta (from
  upright, counter-clockwise positive as Gymnasium draws it), the safe limits |theta| = 1.5 dashed;
* Move, Swing: MuJoCo's own offscreen picture of the cart-pole, with the safe limits |x| = x_max
  (posts) and |theta| = theta_max (rods from the pivot) added as markers. A machine without a
  screen renders through EGL: ``MUJOCO_GL=egl`` is set unless MUJOCO_GL is given or there is a
  DISPLAY (``MUJOCO_GL=osmesa`` is the other headless choice, where libOSMesa is installed);
* any other system (one's own ``--system``): its state coordinates over time, one panel each, the
  safe limits dashed.

Beside the scene, h(s_t) over the steps so far, with the zero line (the edge of C_h) marked. The
animation is a GIF (Pillow, which matplotlib brings) or, where ffmpeg is found (the package
``imageio-ffmpeg`` or an ``ffmpeg`` on the PATH), an MP4.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.animation import FFMpegWriter, PillowWriter  # noqa: E402
from matplotlib.patches import Wedge  # noqa: E402

from crabs.envs import ledger_totals, read_ledger  # noqa: E402
from crabs.envs.cartpole import CartPoleTaskEnv  # noqa: E402
from crabs.envs.pendulum import THETA_LIM, PendulumTaskEnv  # noqa: E402
from crabs.envs.spec import SafetySpec  # noqa: E402
from crabs.explore import GuardedActor  # noqa: E402
from crabs.rollout import Step, mean_actor, run_episode  # noqa: E402
from crabs.system import System  # noqa: E402

FORMATS = (".gif", ".mp4")
SCENE_SIZE = (400, 300)     # the MuJoCo picture, pixels (width, height)
DPI = 80
POLE_LENGTH = 0.6           # the cart-pole's pole (inverted_pendulum.xml), for the theta markers


class RenderError(OSError):
    """The machine cannot draw the scene (no OpenGL backend for MuJoCo's offscreen rendering): an
    OSError, so that the command line reports it in one line like a missing file."""


@dataclass
class Recording:
    """One real episode, as the animation needs it."""

    states: np.ndarray      # s_0 ... s_T, (T + 1, dim)
    actions: np.ndarray     # a_0 ... a_{T-1}, (T, act_dim)
    rewards: np.ndarray     # r_0 ... r_{T-1}
    h: np.ndarray           # h(s_0) ... h(s_T)
    violated: bool
    kind: str               # the scene: "pendulum", "cartpole" or "states"
    ledger: dict            # the render ledger's totals after the episode


def check_output(out: str | os.PathLike, frames: int = 1, fps: int = 1) -> Path:
    """The output file, refused (ValueError) before anything runs unless it is a .gif, or an .mp4
    with ffmpeg to write it, and the frame count and rate are positive."""
    if frames < 1 or fps < 1:
        raise ValueError(f"frames and fps must be positive, got {frames} and {fps}")
    out = Path(out)
    ext = out.suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"--out {str(out)!r}: the animation is written as .gif (or .mp4 with "
                         f"imageio-ffmpeg), not {ext or 'a file without extension'!r}")
    if ext == ".mp4":
        _ffmpeg()
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder, not a file")
    return out


def _ffmpeg() -> str:
    """The ffmpeg that writes MP4s: imageio-ffmpeg's, else one on the PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise ValueError("writing .mp4 needs ffmpeg: pip install imageio-ffmpeg, or write a .gif") \
                from None
        return exe


def _scene_kind(env) -> str:
    base = env.unwrapped
    if isinstance(base, PendulumTaskEnv):
        return "pendulum"
    if isinstance(base, CartPoleTaskEnv):
        return "cartpole"
    return "states"


@torch.no_grad()
def h_values(h, states: np.ndarray) -> np.ndarray:
    """h at each state (one batch), as float64."""
    v = h(torch.as_tensor(np.asarray(states), dtype=torch.float32))
    return torch.as_tensor(v).double().reshape(-1).numpy()


def record_episode(system: System, policy, h, ledger: str | os.PathLike, *, tag: str = "render",
                   seed: int = 0, model=None) -> Recording:
    """One episode of the policy's mean action from s0 (at most the horizon) through a safety
    monitor writing ``ledger`` (counts continuing from what it already holds), and h along it. With
    a ``model`` (and h a Barrier) every step is guarded as the run's evaluations are
    (``explore.guard_eval``): the policy's action if certified from s, else the initial policy's,
    else the lower U. A cart-pole is drawn once first, so that a machine that cannot draw it takes
    no step."""
    env = system.make_monitored_env(ledger=ledger, counters=ledger_totals(read_ledger(ledger)), tag=tag)
    actions, rewards = [], []

    def on_step(st: Step) -> None:
        actions.append(np.asarray(st.decision.action, dtype=np.float64).reshape(-1))
        rewards.append(st.r)

    try:
        kind = _scene_kind(env)
        if kind == "cartpole":
            cartpole_frames(system.spec.s0_array(), system.spec, size=(16, 12))
        actor = (mean_actor(policy) if model is None
                 else GuardedActor([policy, system.initial_policy], h, model))
        ep = run_episode(env, actor, on_step, seed=seed, max_steps=system.spec.horizon)
    finally:
        env.close()
    states = np.asarray(ep.states, dtype=np.float64)
    return Recording(states, np.asarray(actions).reshape(len(actions), -1), np.asarray(rewards, dtype=float),
                     h_values(h, states), ep.violated, kind, env.counters.to_dict())


def frame_steps(length: int, frames: int) -> np.ndarray:
    """``frames`` step indices spread evenly over s_0 ... s_length, both ends included (all of them
    if the episode has fewer states)."""
    n = min(int(frames), length + 1)
    return np.rint(np.linspace(0, length, n)).astype(int) if n > 1 else np.zeros(1, dtype=int)


def _headless_gl() -> None:
    """Pick EGL for MuJoCo's offscreen rendering on a machine without a screen. Gymnasium reads
    MUJOCO_GL when it creates its renderer (not when mujoco is imported), so setting it here still
    takes effect; without it Gymnasium would try GLFW first, which fails with no DISPLAY."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")


def cartpole_frames(states, spec: SafetySpec | None = None, size: tuple[int, int] = SCENE_SIZE) -> np.ndarray:
    """MuJoCo's offscreen pictures (n, height, width, 3) of the cart-pole at each state
    [x, theta, x_dot, theta_dot], with ``spec``'s limits on x and theta drawn as markers. The
    environment is only put in each state and drawn, never stepped. Raises :class:`RenderError`
    when no OpenGL backend works."""
    import mujoco

    _headless_gl()
    states = np.asarray(states, dtype=np.float64).reshape(-1, 4)
    env = CartPoleTaskEnv("move", render_mode="rgb_array", width=size[0], height=size[1])
    limits = dict(spec.limits) if spec is not None else {}
    try:
        env.reset()
        try:
            env.render()          # creates the OpenGL context: the step that fails on a machine without one
        except Exception as e:    # ImportError, RuntimeError, mujoco.FatalError, AttributeError, ...
            raise RenderError(f"MuJoCo cannot render offscreen with MUJOCO_GL="
                              f"{os.environ.get('MUJOCO_GL')!r} ({type(e).__name__}: {e}); a machine "
                              "without a screen needs EGL (MUJOCO_GL=egl) or OSMesa (MUJOCO_GL=osmesa)"
                              ) from e
        viewer = env.mujoco_renderer.viewer
        # from the side (the limits' posts stand upright), fixed on the track's centre wherever the
        # cart is, far enough to see the pole anywhere the limits allow (the track is +-1, the hinge +-90 deg)
        tilt = min(limits.get("theta", np.pi / 2), np.pi / 2)
        reach = max(1.0, limits.get("x", 1.0)) + POLE_LENGTH * np.sin(tilt)
        half_fov = np.tan(np.radians(env.model.vis.global_.fovy) / 2) * size[0] / size[1]
        viewer.cam.lookat[:] = (0.0, 0.0, 0.2)
        viewer.cam.elevation = 0.0
        viewer.cam.distance = (reach + 0.1) / half_fov
        red = np.array([0.9, 0.2, 0.2, 0.8])
        out = []
        for s in states:
            env.set_state(s[:2].copy(), s[2:].copy())
            if "x" in limits:   # posts at the track's limits
                for side in (-1.0, 1.0):
                    viewer.add_marker(type=mujoco.mjtGeom.mjGEOM_BOX, size=np.array([0.01, 0.01, 0.3]),
                                      pos=np.array([side * limits["x"], 0.0, 0.15]), rgba=red)
            if "theta" in limits:   # rods from the pivot at the pole's limits
                for th in (-limits["theta"], limits["theta"]):
                    c, si = np.cos(th), np.sin(th)
                    rot = np.array([[c, 0.0, si], [0.0, 1.0, 0.0], [-si, 0.0, c]])   # about the hinge (y)
                    half = POLE_LENGTH / 2
                    viewer.add_marker(type=mujoco.mjtGeom.mjGEOM_BOX, size=np.array([0.006, 0.006, half]),
                                      pos=np.array([s[0] + si * half, -0.06, c * half]),
                                      mat=rot.flatten(), rgba=red)
            out.append(env.render().copy())
        return np.stack(out)
    finally:
        env.close()


class _PendulumScene:
    """Upright, Tilt: the pole at theta, the safe limits dashed, the unsafe angles shaded."""

    def __init__(self, fig, grid, rec, system):
        self.rec = rec
        ax = self.ax = fig.add_subplot(grid[:, 0])
        ax.set_aspect("equal")
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_xticks([])
        ax.set_yticks([])
        lim = system.spec.limits.get("theta")
        if lim is not None:
            deg = np.degrees(lim)
            ax.add_patch(Wedge((0, 0), 1.2, 90 + deg, 450 - deg, color="tab:red", alpha=0.08))
            for th in (-lim, lim):
                ax.plot([0, -1.2 * np.sin(th)], [0, 1.2 * np.cos(th)], "--", color="tab:red", lw=1.2)
            ax.plot([], [], "--", color="tab:red", label=f"|theta| = {lim:g} (safe limit)")
        if system.name == "tilt":
            ax.plot([0, -1.1 * np.sin(THETA_LIM)], [0, 1.1 * np.cos(THETA_LIM)], ":", color="tab:green",
                    label="theta_lim (Tilt's target)")
        self.pole, = ax.plot([], [], "-", color="tab:blue", lw=6, solid_capstyle="round")
        ax.plot([0], [0], "o", color="k", ms=6)
        # top left: the legend takes the bottom right, and the pole is mostly up and near the middle
        self.text = ax.text(0.02, 0.98, "", transform=ax.transAxes, fontsize=9, family="monospace", va="top")
        ax.legend(loc="lower right", fontsize=7)

    def update(self, t):
        th, thdot = self.rec.states[t][:2]
        self.pole.set_data([0, -np.sin(th)], [0, np.cos(th)])
        # the last state ends the episode: no action is taken there
        act = f"{self.rec.actions[t][0]:+.3f}" if t < len(self.rec.actions) else "- (episode over)"
        self.text.set_text(f"theta {th:+.3f}  theta_dot {thdot:+.3f}\naction {act}")


class _CartPoleScene:
    """Move, Swing: MuJoCo's pictures of the frames' states (:func:`cartpole_frames`)."""

    def __init__(self, fig, grid, rec, system, steps):
        self.rec = rec
        self.images = dict(zip(steps.tolist(), cartpole_frames(rec.states[steps], system.spec)))
        ax = self.ax = fig.add_subplot(grid[:, 0])
        ax.set_xticks([])
        ax.set_yticks([])
        self.image = ax.imshow(self.images[int(steps[0])])
        lim = ", ".join(f"|{k}| <= {v:g}" for k, v in system.spec.limits.items())
        ax.set_title(f"safe: {lim} (red)", fontsize=9)
        self.text = ax.text(0.02, 0.03, "", transform=ax.transAxes, fontsize=9, family="monospace",
                            color="w")

    def update(self, t):
        self.image.set_data(self.images[t])
        s = self.rec.states[t]
        self.text.set_text(f"x {s[0]:+.3f}  theta {s[1]:+.3f}")


class _StatesScene:
    """A system of one's own: each state coordinate over time, the safe limits dashed."""

    def __init__(self, fig, grid, rec, system):
        self.rec = rec
        spec, T = system.spec, len(rec.states) - 1
        self.lines = []
        for i, name in enumerate(spec.state_names):
            ax = fig.add_subplot(grid[i, 0])
            lo, hi = system.state_low[i], system.state_high[i]
            if name in spec.limits:
                for y in (-spec.limits[name], spec.limits[name]):
                    ax.axhline(y, ls="--", color="tab:red", lw=1)
            x = rec.states[:, i]
            finite = x[np.isfinite(x)]
            lo, hi = min(lo, finite.min(initial=lo)), max(hi, finite.max(initial=hi))
            pad = 0.05 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlim(0, max(T, 1))
            ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
            if i < spec.dim - 1:
                ax.set_xticklabels([])
            self.lines.append(ax.plot([], [], color="tab:blue", lw=1.5)[0])
        ax.set_xlabel("step t", fontsize=8)

    def update(self, t):
        steps = np.arange(t + 1)
        for i, line in enumerate(self.lines):
            line.set_data(steps, self.rec.states[: t + 1, i])


def _figure(rec: Recording, system: System, steps: np.ndarray, title: str):
    """The figure of the animation and a function that updates it to step t."""
    rows = system.spec.dim if rec.kind == "states" else 1
    fig = plt.figure(figsize=(10, 4.6 if rows <= 3 else 1.5 * rows), dpi=DPI)
    grid = fig.add_gridspec(rows, 2, width_ratios=[1.25, 1], left=0.05, right=0.97, top=0.8,
                            bottom=0.13, wspace=0.22, hspace=0.15)
    if rec.kind == "pendulum":
        scene = _PendulumScene(fig, grid, rec, system)
    elif rec.kind == "cartpole":
        scene = _CartPoleScene(fig, grid, rec, system, steps)
    else:
        scene = _StatesScene(fig, grid, rec, system)
    # h(s_t) so far, against the whole episode's axes
    ax = fig.add_subplot(grid[:, 1])
    T = len(rec.states) - 1
    finite = rec.h[np.isfinite(rec.h)]
    lo, hi = min(0.0, finite.min(initial=0.0)), max(0.0, finite.max(initial=0.0))
    pad = 0.1 * (hi - lo) or 0.1
    ax.set_xlim(0, max(T, 1))
    ax.set_ylim(lo - pad, hi + pad)
    ax.axhspan(lo - pad, 0, color="tab:red", alpha=0.08)
    ax.axhline(0.0, color="tab:red", ls="--", lw=1.2, label="h = 0: the edge of C_h")
    h_line, = ax.plot([], [], color="tab:blue", lw=1.5, label="h(s_t)")
    dot, = ax.plot([], [], "o", ms=6)
    ax.set_xlabel("step t")
    ax.set_title("certificate margin h(s_t) (certified: h >= 0)", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    sup = fig.suptitle("", fontsize=11)
    returns = np.concatenate([[0.0], np.cumsum(rec.rewards)])

    def update(t: int) -> None:
        scene.update(t)
        h_line.set_data(np.arange(t + 1), rec.h[: t + 1])
        dot.set_data([t], [rec.h[t]])
        dot.set_color("tab:red" if rec.h[t] < 0 else "tab:blue")
        sup.set_text(f"{title}\nt = {t}/{T}   return so far {returns[t]:.4g}   h(s_t) = {rec.h[t]:+.3f}")

    return fig, update


def write_animation(rec: Recording, system: System, out: str | os.PathLike, *, frames: int = 100,
                    fps: int = 20, title: str = "") -> int:
    """The animation of a recorded episode into ``out`` (.gif or .mp4); returns its frame count."""
    out = check_output(out, frames, fps)
    steps = frame_steps(len(rec.states) - 1, frames)
    fig, update = _figure(rec, system, steps, title or system.name)
    mp4 = out.suffix.lower() == ".mp4"
    writer = FFMpegWriter(fps=fps) if mp4 else PillowWriter(fps=fps)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context({"animation.ffmpeg_path": _ffmpeg()} if mp4 else {}), \
                writer.saving(fig, str(out), DPI):
            for t in steps:
                update(int(t))
                writer.grab_frame()
    finally:
        plt.close(fig)
    return len(steps)


def animate(system: System, policy, h, out: str | os.PathLike, *, ledger: str | os.PathLike,
            frames: int = 100, fps: int = 20, title: str = "", seed: int = 0, model=None) -> dict:
    """A real episode of ``policy`` (its mean action, guarded if a ``model`` is given) from s0
    through a monitor writing ``ledger``, drawn with h along it into ``out``; returns the episode's
    summary. ``h`` is any function of a batch of states (a Barrier, or e.g. a constant to draw a
    policy that has no certificate)."""
    out = check_output(out, frames, fps)
    rec = record_episode(system, policy, h, ledger, seed=seed, model=model)
    n = write_animation(rec, system, out, frames=frames, fps=fps, title=title)
    return {"system": system.name, "return": float(rec.rewards.sum()), "length": len(rec.rewards),
            "violations": int(rec.violated), "min_h": float(rec.h.min()), "end_h": float(rec.h[-1]),
            "steps_outside_C_h": int((rec.h < 0).sum()), "end_state": rec.states[-1].tolist(),
            "frames": n, "fps": fps, "out": str(out), "ledger": str(ledger), "ledger_totals": rec.ledger}


def render_run(run_dir: str | os.PathLike, out: str | os.PathLike, system: System | None = None,
               which: str = "delivered", frames: int = 100, fps: int = 20) -> dict:
    """The animation of a CRABS run's (policy, h) pair ``which`` (``"delivered"`` or ``"last"``, as
    :func:`crabs.verify.load_run` reads them) from s0 into ``out``; the episode's ledger is
    ``RUN/render/ledger.jsonl``. Returns the episode's summary (return, length, violations, the
    lowest h along it, ...)."""
    from crabs.verify import load_run

    out = check_output(out, frames, fps)
    pair = load_run(run_dir, system, which)
    title = f"{pair.system.name}: {Path(run_dir).name}, {which} pair (epoch {pair.pair_epoch})"
    ledger = Path(run_dir) / "render" / "ledger.jsonl"
    summary = animate(pair.system, pair.policy, pair.h, out, ledger=ledger, frames=frames, fps=fps,
                      title=title, model=pair.model)
    return {"run": str(run_dir), "which": which, "pair_epoch": pair.pair_epoch, **summary}


__all__ = ["Recording", "RenderError", "animate", "cartpole_frames", "check_output", "frame_steps",
           "record_episode", "render_run", "write_animation"]
