"""The safety monitor counts every real step, episode and violation, and ledgers them."""

import gymnasium as gym
import numpy as np
import pytest

from crabs.envs import MonitorCounters, SafetyMonitor, get_task, ledger_totals, make_env, read_ledger


def test_counts_and_ledger(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    env = make_env("upright", ledger=ledger, tag="t")
    # episode 1: push over -> violation
    env.reset()
    steps = 0
    while True:
        _, r, term, trunc, info = env.step(np.array([1.0]))
        steps += 1
        if term or trunc:
            break
    assert info["cost"] == 1.0 and r == -30.0
    # episode 2: stopped after 5 steps by a reset
    env.reset()
    for _ in range(5):
        env.step(np.array([0.0]))
    env.reset()
    env.close()  # episode 3 had no steps: not counted
    c = env.counters
    assert c == MonitorCounters(env_steps=steps + 5, episodes=2, violations=1)
    recs = read_ledger(ledger)
    kinds = [r["event"] for r in recs]
    assert kinds == ["violation", "episode", "episode"]
    assert recs[0]["env_steps"] == steps and len(recs[0]["next_state"]) == 2
    assert recs[1]["violated"] and recs[1]["end"] == "violation"
    assert recs[2]["end"] == "reset" and recs[2]["length"] == 5
    assert all(r["tag"] == "t" for r in recs)


def test_ledger_is_append_only_and_counters_continue(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    env = make_env("upright", ledger=ledger)
    env.reset()
    env.step(np.array([0.0]))
    env.close()
    env2 = make_env("upright", ledger=ledger, counters=MonitorCounters(1, 1, 0))
    env2.reset()
    env2.step(np.array([0.0]))
    env2.close()
    recs = read_ledger(ledger)
    assert [r["episode"] for r in recs] == [1, 2] and recs[-1]["env_steps"] == 2


def test_monitor_checks_safety_itself():
    """An environment that forgets to report cost is still caught by the spec check."""

    class Liar(gym.Wrapper):
        def step(self, a):
            o, r, term, trunc, info = self.env.step(a)
            return o, r, False, trunc, {}

    env = SafetyMonitor(Liar(gym.make("crabs/Upright-v0")), get_task("upright").spec)
    env.reset(options={"state": [1.49, 5.0]})
    _, _, term, _, info = env.step(np.array([1.0]))
    assert info["cost"] == 1.0 and term and env.counters.violations == 1


def test_step_without_reset_and_after_end_raise():
    env = make_env("upright")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0]))
    env.reset(options={"state": [1.49, 5.0]})
    env.step(np.array([1.0]))  # violation ends the episode
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0]))


def test_rejects_nan_action_and_unsafe_reset():
    env = make_env("move")
    env.reset()
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan]))
    assert env.counters.env_steps == 0
    with pytest.raises(RuntimeError, match="unsafe initial state"):
        env.reset(options={"state": [0.95, 0.0, 0.0, 0.0]})


def test_needs_a_spec():
    with pytest.raises(TypeError, match="SafetySpec"):
        SafetyMonitor(gym.make("Pendulum-v1"))


def test_torn_last_line_is_skipped(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text('{"event": "episode"}\n{"event": "viol')
    assert read_ledger(p) == [{"event": "episode"}]


def test_hard_kill_mid_episode_loses_at_most_a_heartbeat(tmp_path):
    """The process dies mid-episode (no close, no episode record): the ledger's progress records
    still give the steps to within ``heartbeat`` and count the unfinished episode."""
    ledger = tmp_path / "ledger.jsonl"
    import torch

    from crabs.initial import initial_policy

    pi = initial_policy("upright")

    def act(s):
        with torch.no_grad():
            return pi.mean_action(torch.as_tensor(s, dtype=torch.float32)).double().numpy()

    env = SafetyMonitor(gym.make("crabs/Upright-v0"), ledger=ledger, heartbeat=50)
    s, _ = env.reset()
    for _ in range(200):  # one full episode (horizon 200)
        s, *_ = env.step(act(s))
    s, _ = env.reset()
    for _ in range(120):  # then killed after 120 steps of the second
        s, *_ = env.step(act(s))
    tot = ledger_totals(read_ledger(ledger))
    assert tot.episodes == 2 and tot.violations == 0
    assert 120 - 50 < tot.env_steps - 200 <= 120
    env._ledger.close()


def test_ledger_totals_count_a_violation_of_an_unfinished_episode():
    recs = [{"event": "episode", "episode": 1, "env_steps": 10, "violations": 0},
            {"event": "violation", "violation": 1, "episode": 2, "env_steps": 13}]
    assert ledger_totals(recs) == MonitorCounters(env_steps=13, episodes=2, violations=1)
