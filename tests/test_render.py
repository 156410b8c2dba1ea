"""``crabs render``: the GIF of a run's delivered policy has the frames asked for, its episode is a
real one counted in the render ledger, bad input gets a one-line error, and MuJoCo draws the
cart-pole headless."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY as TINY_RUN

from crabs import render
from crabs.cli import main
from crabs.config import Config
from crabs.envs import make_state_env, read_ledger
from crabs.envs.cartpole import MOVE_SPEC
from crabs.envs.pendulum import PENDULUM_SPEC, pendulum_step, upright_reward
from crabs.initial import initial_policy
from crabs.loop import train
from crabs.render import RenderError, animate, cartpole_frames, frame_steps, record_episode, render_run
from crabs.system import System, builtin_system

# tests/tiny.py's reduced Upright run, one epoch: enough for a delivered (policy, h) pair
TINY = {**TINY_RUN, "epochs": 1}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    summary = train("upright", Config.from_dict(TINY), out, progress=False)
    return out, summary


def _const_h(states: torch.Tensor) -> torch.Tensor:
    """A stand-in certificate: h = 0.5 everywhere."""
    return torch.full(states.shape[:1], 0.5)


def test_frame_steps_spread_evenly_over_the_episode():
    s = frame_steps(200, 12)
    assert len(s) == 12 and s[0] == 0 and s[-1] == 200 and np.all(np.diff(s) > 0)
    assert frame_steps(3, 100).tolist() == [0, 1, 2, 3]    # never more frames than states
    assert frame_steps(0, 5).tolist() == [0]


def test_output_is_checked_before_anything_runs(tmp_path, monkeypatch):

    for out, frames, says in [("a.png", 10, ".gif"), ("a.gif", 0, "positive"), (tmp_path, 10, ".gif")]:
        with pytest.raises(ValueError, match=says):
            render.check_output(out, frames)
    (tmp_path / "d.gif").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        render.check_output(tmp_path / "d.gif")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)     # no imageio-ffmpeg, no ffmpeg
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="pip install imageio-ffmpeg"):
        render.check_output("a.mp4")
    with pytest.raises(ValueError, match="positive"):   # refused before the episode: nothing ledgered
        animate(builtin_system("upright"), initial_policy("upright"), _const_h, tmp_path / "a.gif",
                ledger=tmp_path / "l.jsonl", fps=0)
    assert not (tmp_path / "l.jsonl").exists()


def test_render_run_writes_the_frames_asked_for_and_ledgers_the_episode(tiny_run, tmp_path):
    run, run_summary = tiny_run
    ledger_before = len(read_ledger(run / "ledger.jsonl"))
    r = render_run(run, tmp_path / "u.gif", frames=12, fps=10)
    with Image.open(tmp_path / "u.gif") as im:
        assert im.n_frames == 12 and im.info["duration"] == 100
    assert r["frames"] == 12 and r["pair_epoch"] == run_summary["final_policy_epoch"]
    assert r["length"] == 200 and r["violations"] == 0            # Upright's horizon, from s0
    # the delivered policy from s0 is the run's final evaluation (deterministic): same return and end
    assert r["return"] == pytest.approx(run_summary["final_eval_return"], abs=1e-6)
    assert r["min_h"] <= r["end_h"] and r["min_h"] == pytest.approx(run_summary["final_eval_min_h"], abs=1e-4)
    # every step is a real one, counted in the render ledger (tag "render"), not in the run's
    led = read_ledger(run / "render" / "ledger.jsonl")
    eps = [x for x in led if x["event"] == "episode"]
    assert [(x["tag"], x["length"], x["env_steps"]) for x in eps] == [("render", 200, 200)]
    assert r["ledger_totals"] == {"env_steps": 200, "episodes": 1, "violations": 0}
    assert len(read_ledger(run / "ledger.jsonl")) == ledger_before
    # a second render continues the render ledger's counts
    r2 = render_run(run, tmp_path / "u2.gif", frames=3)
    assert r2["ledger_totals"] == {"env_steps": 400, "episodes": 2, "violations": 0}
    with Image.open(tmp_path / "u2.gif") as im:
        assert im.n_frames == 3


def test_cli_render_and_its_one_line_errors(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    assert main(["render", str(run), "--out", str(tmp_path / "c.gif"), "--frames", "4", "--fps", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frames"] == 4 and out["length"] == 200 and out["violations"] == 0
    with Image.open(tmp_path / "c.gif") as im:
        assert im.n_frames == 4
    steps = sum(x["length"] for x in read_ledger(run / "render" / "ledger.jsonl") if x["event"] == "episode")
    for argv, says in [([str(run), "--out", str(tmp_path / "c.png")], ".gif"),             # bad extension
                       ([str(run), "--out", str(tmp_path / "c")], "without extension"),
                       ([str(tmp_path / "nothing"), "--out", str(tmp_path / "n.gif")], "holds no CRABS"),
                       ([str(run), "--out", str(tmp_path / "s.gif"), "--system",
                         "crabs.examples.lane_car:nope"], "has no function 'nope'")]:
        assert main(["render", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("crabs: error: ") and says in err and "\n" not in err, err
    # none of the refused renders stepped the environment
    assert steps == sum(x["length"] for x in read_ledger(run / "render" / "ledger.jsonl")
                        if x["event"] == "episode")
    with pytest.raises(SystemExit):   # argparse: frames must be positive
        main(["render", str(run), "--out", str(tmp_path / "z.gif"), "--frames", "0"])


def test_mujoco_draws_move_headless(tmp_path):
    """The cart-pole's own MuJoCo picture, offscreen (EGL where there is no screen), for a few states
    and for a whole episode of Move's initial policy drawn with a constant h."""
    states = np.array([[-0.5, 0.0, 0.0, 0.0], [0.5, 0.1, 0.0, 0.0], [0.5, 0.1, 0.0, 0.0]])
    try:
        imgs = cartpole_frames(states, MOVE_SPEC, size=(160, 120))
    except RenderError as e:
        pytest.skip(f"no OpenGL backend for MuJoCo's offscreen rendering on this machine: {e}")
    assert imgs.shape == (3, 120, 160, 3) and imgs.dtype == np.uint8
    assert imgs[0].max() > 100                                  # something is drawn
    assert np.abs(imgs[0].astype(int) - imgs[1]).sum() > 0      # where the cart is shows
    assert np.array_equal(imgs[1], imgs[2])                     # and only that
    r = animate(builtin_system("move"), initial_policy("move"), _const_h, tmp_path / "m.gif",
                ledger=tmp_path / "ledger.jsonl", frames=4, fps=10)
    with Image.open(tmp_path / "m.gif") as im:
        assert im.n_frames == 4
    assert (r["length"], r["violations"], r["min_h"], r["end_h"]) == (1000, 0, 0.5, 0.5)
    assert r["ledger_totals"] == {"env_steps": 1000, "episodes": 1, "violations": 0}


def test_a_machine_that_cannot_draw_the_cart_pole_takes_no_step(tmp_path, monkeypatch):
    def no_gl(*args, **kwargs):
        raise RenderError("no OpenGL here")

    monkeypatch.setattr(render, "cartpole_frames", no_gl)
    with pytest.raises(RenderError, match="no OpenGL"):
        animate(builtin_system("swing"), initial_policy("swing"), _const_h, tmp_path / "s.gif",
                ledger=tmp_path / "l.jsonl")
    assert read_ledger(tmp_path / "l.jsonl") == [] and not (tmp_path / "s.gif").exists()


def test_a_system_of_ones_own_is_drawn_as_its_state_coordinates(tmp_path):
    spec = PENDULUM_SPEC
    system = System("toy", lambda: make_state_env(spec, pendulum_step, upright_reward, act_dim=1), spec,
                    initial_policy("upright"), [-1.5, -8.0], [1.5, 8.0])
    rec = record_episode(system, system.initial_policy, lambda s: 0.05 - s[:, 0] ** 2, tmp_path / "l.jsonl")
    assert rec.kind == "states" and rec.states.shape == (201, 2) and rec.actions.shape == (200, 1)
    assert rec.h == pytest.approx(0.05 - rec.states[:, 0] ** 2, abs=1e-6)
    assert rec.h.min() < 0                    # s0 = (0.3, -0.9) lies outside this h's C_h
    r = animate(system, system.initial_policy, lambda s: 0.05 - s[:, 0] ** 2, tmp_path / "toy.gif",
                ledger=tmp_path / "l.jsonl", frames=5)
    with Image.open(tmp_path / "toy.gif") as im:
        assert im.n_frames == 5
    assert r["steps_outside_C_h"] > 0 and r["ledger_totals"]["env_steps"] == 400   # two episodes now
