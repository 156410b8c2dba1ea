"""Figure 2 as the paper draws it: one column per task, mean and one standard deviation over the
seeds of each algorithm, violations read from the ledger (offline ones included)."""

import json

import numpy as np
import pytest

from crabs import plots


def _run(d, evals, episodes, offline=None):
    """A run folder with metrics.csv (env_steps, eval_return) and a ledger of episode records."""
    d.mkdir()
    (d / "metrics.csv").write_text("epoch,env_steps,eval_return\n" + "".join(
        f"{i},{x},{y}\n" for i, (x, y) in enumerate(evals)))
    recs = []
    if offline:
        steps, viol = offline
        recs.append({"event": "episode", "tag": "offline", "episode": 1, "env_steps": steps,
                     "violations": viol})
    recs += [{"event": "episode", "tag": "explore", "episode": len(recs) + i + 1, "env_steps": x,
              "violations": v} for i, (x, v) in enumerate(episodes)]
    (d / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_mean_and_std_of_step_functions_over_the_common_steps():
    a = (np.array([0.0, 10.0]), np.array([0.0, 2.0]))
    b = (np.array([0.0, 5.0, 10.0, 20.0]), np.array([0.0, 1.0, 1.0, 9.0]))
    grid, mean, std = plots._mean_std([a, b])
    assert grid.tolist() == [0.0, 5.0, 10.0, 20.0]
    assert mean.tolist() == [0.0, 0.5, 1.5, 9.0]      # a holds 0 until its step 10; then b alone
    assert std[:3].tolist() == pytest.approx([0.0, 0.5, 0.5]) and np.isnan(std[3])   # no band
    assert plots._mean_std([(np.array([]), np.array([]))]) is None


def test_run_curves_count_offline_violations_and_shift_to_online_steps(tmp_path):
    d = _run(tmp_path / "r", [(1200, -5.0), (2200, -1.0)], [(1100, 7), (1200, 9)], offline=(1000, 7))
    c = plots.run_curves(d)
    assert c["viol_x"].tolist() == [0, 100, 200] and c["viol_y"].tolist() == [7, 7, 9]
    assert c["eval_x"].tolist() == [200, 1200] and c["eval_y"].tolist() == [-5.0, -1.0]
    assert (c["offline_steps"], c["offline_violations"]) == (1000, 7)


def test_figure2_one_column_per_task_one_curve_per_label(tmp_path, monkeypatch):
    runs = [("upright", "crabs", _run(tmp_path / "u0", [(100, -1.0), (200, -0.5)], [(100, 0), (200, 0)])),
            ("upright", "crabs", _run(tmp_path / "u1", [(100, -3.0), (200, -0.5)], [(100, 0), (200, 0)])),
            ("upright", "sac", _run(tmp_path / "u2", [(100, -9.0)], [(100, 3)])),
            ("tilt", "sac", _run(tmp_path / "t1", [(100, -7.0)], [(100, 2)])),
            ("tilt", "crabs", _run(tmp_path / "t0", [(100, -4.0)], [(100, 0)]))]
    seen = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out: seen.setdefault("fig", fig))
    plots.figure2(runs, tmp_path / "f.png")
    axes = np.array(seen["fig"].axes).reshape(2, 2)
    assert [ax.get_title() for ax in axes[0]] == ["upright", "tilt"]
    labels = [t.get_text() for t in axes[1, 0].get_legend().get_texts()]
    assert labels == ["crabs (2 runs)", "sac"]
    crabs_line = axes[0, 0].get_lines()[0]
    assert crabs_line.get_ydata().tolist() == [-2.0, -0.5]      # the mean of the two seeds
    assert len(axes[0, 0].collections) == 1                     # one shaded band: crabs only
    colour = {ln.get_label(): ln.get_color() for ax in axes[0] for ln in ax.get_lines()}
    assert [ln.get_color() for ln in axes[0, 1].get_lines()] == [colour["sac"], colour["crabs (2 runs)"]]
    assert axes[0, 1].get_lines()[0].get_marker() == "o"        # a one-evaluation curve still shows
