"""Ground truth for Upright and Tilt (crabs.oracle).

Tolerances (figures measured with the default 301 x 481 grid in brackets):
* viability kernel: area fraction of |theta| <= 1.5, |theta_dot| <= 8 in [0.20, 0.24]
  (0.2210; expected "about 22%"); the value-iteration cross-check over-approximates it by at
  most 0.03 at 201 x 321 nodes (0.241);
* soundness: 200 random kernel grid nodes are kept safe for 200 steps on the true dynamics by the
  greedy kernel-keeping controller, and every kernel node has an action whose successor is viable;
* Upright: best return by DP and by controller search each within 0.01 of -0.216 and within
  0.01 of each other (-0.2160 / -0.2160);
* Tilt: search >= -2.40 and DP >= -2.45, both <= -2.0 (-2.327 / -2.334);
* every returned trajectory is safe for the whole horizon and replays to the same return in the
  environment.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from crabs import oracle
from crabs.envs.pendulum import HORIZON, S0, THETA_LIM, PendulumTaskEnv, pendulum_step


@pytest.fixture(scope="module")
def kernel() -> oracle.ViabilityKernel:
    return oracle.viability_kernel()


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], oracle.OracleResult]:
    return {(t, m): oracle.best_return(t, m) for t in oracle.PENDULUM_TASKS for m in ("dp", "search")}


def test_kernel_fraction(kernel):
    assert 0.20 <= kernel.fraction <= 0.24
    assert abs(kernel.grid_fraction - kernel.fraction) < 0.005
    assert kernel.value.shape == kernel.mask.shape == (len(kernel.theta), len(kernel.theta_dot))
    assert oracle.viability_kernel() is kernel  # cached within the process


def test_kernel_membership(kernel):
    inside = np.array([S0, [0.0, 0.0], [THETA_LIM + 1e-6, 0.0], [0.5, -2.0], [1.4, -6.0]])
    outside = np.array([[1.4, 6.0], [-1.4, -6.0], [0.5, 0.0], [THETA_LIM - 0.01, 0.0], [1.6, -7.0]])
    assert kernel.contains(inside).all() and oracle.is_viable(inside).all()
    assert not kernel.contains(outside).any() and not oracle.is_viable(outside).any()
    # the saddle (theta_lim, 0) is held by a = +1: on the kernel's boundary
    assert oracle.is_viable(np.array([THETA_LIM, 0.0]))
    assert kernel.contains(np.zeros((3, 4, 2))).shape == (3, 4)


def test_interpolated_contains_matches_exact_test(kernel):
    rng = np.random.default_rng(1)
    s = rng.uniform([-1.5, -8.0], [1.5, 8.0], size=(5000, 2))
    exact = oracle.is_viable(s)
    approx = kernel.contains(s)
    assert 0.20 < exact.mean() < 0.24  # Monte Carlo estimate of the fraction
    assert (exact == approx).mean() >= 0.998
    assert np.abs(kernel.margin(s[exact != approx])).max(initial=0.0) < 0.01  # only at the edge


def test_kernel_is_sound_under_kernel_keeping_controller(kernel):
    """200 random kernel nodes (and 100 next to its edge) stay safe for 200 steps on the true
    dynamics (Definition 1)."""
    rng = np.random.default_rng(0)
    i, j = np.nonzero(kernel.mask)
    pick = rng.choice(len(i), size=200, replace=False)
    edge = rng.choice(np.flatnonzero(kernel.value[i, j] < 0.05), size=100, replace=False)
    pick = np.concatenate([pick, edge])  # plus 100 nodes within 0.05 rad/s of the boundary
    s = np.stack([kernel.theta[i[pick]], kernel.theta_dot[j[pick]]], -1)
    safe = np.ones(len(s), dtype=bool)
    for _ in range(HORIZON):
        s = pendulum_step(s, oracle.kernel_keeping_action(kernel, s))
        safe &= np.abs(s[:, 0]) <= 1.5
    assert safe.all()
    assert oracle.is_viable(s).all()


def test_every_kernel_node_has_a_viable_successor(kernel):
    """Invariance of the exact kernel, sampled with the nodes nearest its boundary included."""
    rng = np.random.default_rng(2)
    nodes = np.argwhere(kernel.mask)
    margin = kernel.value[kernel.mask]
    edge = np.flatnonzero(margin < 0.1)
    pick = np.concatenate([rng.choice(edge, 300, replace=False),
                           rng.choice(len(nodes), 200, replace=False)])
    s = np.stack([kernel.theta[nodes[pick, 0]], kernel.theta_dot[nodes[pick, 1]]], -1)
    acts = np.linspace(-1.0, 1.0, 101)
    nxt = pendulum_step(s[:, None, :], np.broadcast_to(acts, (len(s), len(acts))))
    assert oracle.is_viable(nxt).any(axis=1).all()


def test_no_successor_of_a_safe_state_is_doomed_both_ways():
    """The premise of the exact kernel: a successor (theta', theta_dot') of a safe state
    (|theta' - 0.05 theta_dot'| <= 1.5) can avoid falling to one side or the other."""
    th, thdot = np.meshgrid(np.linspace(-1.9, 1.9, 381), np.linspace(-8, 8, 161), indexing="ij")
    s = np.stack([th.ravel(), thdot.ravel()], -1)
    s = s[np.abs(s[:, 0] - 0.05 * s[:, 1]) <= 1.5]
    assert (oracle._one_sided(s, +1) | oracle._one_sided(s, -1)).all()


def test_value_iteration_agrees_with_exact_kernel():
    vi = oracle.value_iteration_kernel(201, 321)
    exact = oracle.viability_kernel(201, 321)
    assert exact.fraction <= vi.fraction <= exact.fraction + 0.03
    assert (exact.mask & ~vi.mask).mean() < 0.001  # VI over-approximates
    assert (exact.mask != vi.mask).mean() < 0.03
    extra = np.argwhere(vi.mask & ~exact.mask)  # what VI adds is truly not viable
    assert not oracle.is_viable(np.stack([vi.theta[extra[:, 0]], vi.theta_dot[extra[:, 1]]], -1)).any()


def test_upright_best_return(results):
    dp, search = results["upright", "dp"].value, results["upright", "search"].value
    assert abs(dp - (-0.216)) < 0.01 and abs(search - (-0.216)) < 0.01
    assert abs(dp - search) < 0.01


def test_tilt_best_return(results):
    dp, search = results["tilt", "dp"].value, results["tilt", "search"].value
    assert -2.40 <= search <= -2.0
    assert -2.45 <= dp <= -2.0


@pytest.mark.parametrize("task", oracle.PENDULUM_TASKS)
@pytest.mark.parametrize("method", ["dp", "search"])
def test_trajectories_are_safe_and_replay(results, task, method):
    res = results[task, method]
    assert res.task == task and res.method == method
    assert res.states.shape == (HORIZON + 1, 2) and res.actions.shape == (HORIZON,)
    np.testing.assert_array_equal(res.states[0], S0)
    assert res.safe and np.abs(res.states[:, 0]).max() <= 1.5
    assert res.ends_viable
    env = PendulumTaskEnv(task)
    env.reset()
    total = 0.0
    for a in res.actions:
        _, r, violated, _, _ = env.step(np.array([a]))
        total += r
        assert not violated
    assert total == pytest.approx(res.value, abs=1e-9)


def test_rejects_other_tasks_and_methods():
    for task in ("move", "swing", "nope"):
        with pytest.raises(ValueError, match="pendulum"):
            oracle.best_return(task)
        with pytest.raises(ValueError, match="pendulum"):
            oracle.report(task)
    with pytest.raises(ValueError, match="method"):
        oracle.best_return("upright", method="magic")


def test_report_is_json(kernel):
    rep = json.loads(json.dumps(oracle.report("tilt")))
    assert rep["task"] == "tilt" and rep["horizon"] == HORIZON and rep["s0"] == list(S0)
    assert rep["kernel_fraction"] == pytest.approx(kernel.fraction)
    assert set(rep["best_return"]) == {"dp", "search"} and all(rep["safe"].values())
