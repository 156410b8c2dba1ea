"""The one episode loop (rollout.py) and the safety state's decisions (safety.py), driven directly."""

import numpy as np
import pytest
import torch

from crabs.config import BarrierConfig
from crabs.envs import make_env, read_ledger
from crabs.initial import ModelEnv, initial_policy, rollout_model
from crabs.rollout import Decision, mean_actor, run_episode
from crabs.safety import DILATION_MAX, DILATION_MIN, EpochPlan, SafetyState, next_dilation


def test_real_environments_are_only_stepped_through_the_monitor():
    import gymnasium as gym

    with pytest.raises(TypeError, match="only stepped through a SafetyMonitor"):
        run_episode(gym.make("crabs/Upright-v0").unwrapped, lambda s: np.zeros(1))
    ep = run_episode(ModelEnv("upright"), lambda s: np.zeros(1), max_steps=3)   # a model may be
    assert ep.length == 3                                                      # stepped directly


def test_hooks_see_every_step_and_may_end_the_episode(tmp_path):
    env = make_env("upright", ledger=tmp_path / "ledger.jsonl", tag="t")
    seen = []

    def hook(st):
        seen.append((st.t, st.decision.safeguard, st.decision.U))
        return st.t == 4   # end after the fifth step

    ep = run_episode(env, lambda s: Decision(np.zeros(1), safeguard=True, U=-0.5), hook)
    env.close()
    assert ep.length == 5 and len(ep.states) == 6 and ep.safeguards == 5 and not ep.violated
    assert seen == [(t, True, -0.5) for t in range(5)]
    assert env.counters.env_steps == 5     # every step counted, the early end ledgered
    assert [r["length"] for r in read_ledger(tmp_path / "ledger.jsonl") if r["event"] == "episode"] == [5]


def test_a_violation_ends_the_episode_and_is_reported():
    env = make_env("upright")
    ep = run_episode(env, lambda s: np.ones(1), options={"state": [1.45, 5.0]})   # pushed over the edge
    assert ep.violated and env.counters.violations == 1 and abs(ep.states[-1][0]) > 1.5


def test_on_reset_sees_the_first_state_before_any_step():
    def refuse(s):
        raise ValueError("refused")

    env = make_env("upright")
    with pytest.raises(ValueError, match="refused"):
        run_episode(env, lambda s: np.zeros(1), on_reset=refuse)
    assert env.counters.env_steps == 0


def test_rollout_model_is_the_model_without_the_monitor():
    policy = initial_policy("upright")
    ret, safe, states = rollout_model("upright", policy)
    assert safe and len(states) == 201 and -3.0 < ret < -0.3
    ret2, safe2, states2 = rollout_model("upright", policy, start=[1.45, 8.0])   # beyond saving
    assert not safe2 and len(states2) < 201
    r = sum(float(-s[0] ** 2) for s in states2[:-1])    # r(s) of each step's start state, then -30
    assert ret2 == pytest.approx(r - 30.0)
    env = make_env("upright")
    ep = run_episode(env, mean_actor(policy))
    np.testing.assert_allclose(ep.states, states, atol=1e-9)   # the model is the pendulum's equations


# -- the safety state's decisions ----------------------------------------------------------------
@pytest.mark.parametrize("on_stuck,certified,regrow,mode,accept,expected", [
    ("rollback", True, True, "rollouts", "always", (False, True, False, False)),
    ("rollback", False, True, "dilate", "always", (False, True, True, False)),
    ("carry", True, True, "dilate", "if_larger", (False, True, True, True)),
    ("carry", False, True, "dilate", "if_larger", (True, False, False, False)),   # carry: no regrowth
    ("rollback", True, False, "dilate", "if_larger", (False, False, False, False)),
])
def test_epoch_plan(on_stuck, certified, regrow, mode, accept, expected):
    c = BarrierConfig(on_stuck=on_stuck, regrow=regrow, regrow_mode=mode, regrow_accept=accept)
    plan = EpochPlan.decide(c, certified)
    assert (plan.carry, plan.regrow, plan.dilate, plan.judge) == expected
    # Alg. 1's h is kept when it went quiet; otherwise rolled back, unless carried
    assert plan.keep_certificate(True) and plan.keep_certificate(False) == plan.carry


def test_dilation_grows_after_success_and_halves_after_failure_within_bounds():
    assert next_dilation(0.2, True) == pytest.approx(0.25) and next_dilation(0.2, False) == pytest.approx(0.1)
    assert next_dilation(0.55, True) == DILATION_MAX and next_dilation(0.03, False) == DILATION_MIN


def test_safety_state_transitions():
    pi0, pi1 = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    s = SafetyState(pi0)
    assert s.acting_epoch(5) == 0 and s.delivered("best", 5) == (0, None)   # the initial policy acts
    assert not s.offer_best(1, -1.0, pi1, {})                    # uncertified: never the best pair
    s.after_check(True, pi1, 3)
    assert s.certified and s.safe_policy_epoch == 3 and s.acting_epoch(5) == 5
    pi1["w"] += 1                                                # a copy was kept, not the live dict
    assert torch.equal(s.safe_policy["w"], torch.ones(2))
    assert s.offer_best(3, -2.0, pi1, {"h": 1}) and not s.offer_best(4, -2.0, pi1, {"h": 2})
    assert not s.offer_best(4, float("nan"), pi1, {})
    s.after_check(False, pi0, 4)                                 # a failed check: the last certified acts
    assert not s.certified and s.safe_policy_epoch == 3 and s.acting_epoch(4) == 3
    assert s.delivered("best", 4)[0] == 3 and s.delivered("best", 4)[1]["h"] == {"h": 1}
    assert s.delivered("last", 4) == (3, None)
    s.dilation = 0.2
    d = s.to_dict()
    back = SafetyState.from_checkpoint(d, 0.3)   # a resumed run: every field as it was saved
    assert (back.certified, back.safe_policy_epoch, back.dilation) == (False, 3, 0.2)
    assert torch.equal(back.safe_policy["w"], torch.ones(2)) and back.best["h"] == {"h": 1}
    assert back.delivered("best", 4)[0] == 3 and back.acting_epoch(4) == 3
    d["safe_policy"]["w"] += 1                   # the restored state holds its own copy
    assert torch.equal(back.safe_policy["w"], torch.ones(2))
    old = {k: v for k, v in d.items() if k != "dilation"}
    assert SafetyState.from_checkpoint(old, 0.3).dilation == 0.3   # older checkpoints: the default
