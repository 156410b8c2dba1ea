"""The baselines of the paper's Sec. 6, run through the same safety monitor as CRABS, so their
violations are counted the same way (every real step: evaluation and offline data included).

* ``sac``: Soft Actor-Critic with learned temperature, started from the task's safe initial
  policy, with a penalty for a violation (App. C.3: 30).
* ``recovery_rl``: RecoveryRL with a model-free recovery policy (eps_risk 0.5, gamma_risk 0.6).
* ``sqrl``: SQRL, a safety critic filtering the actions and a Lagrangian nu = 30 in the policy loss.
* ``cpo``: Constrained Policy Optimization, on-policy trust-region steps under a constraint on the
  violations per trajectory, started from the safe initial policy.
"""

from crabs.baselines.common import Learner, train_baseline
from crabs.baselines.config import ALGORITHMS, BaselineConfig, RiskConfig, load_baseline_config
from crabs.baselines.cpo import CPO, train_cpo
from crabs.baselines.recovery_rl import RecoveryRL, train_recovery_rl
from crabs.baselines.sac_penalty import SACPenalty, train_sac_penalty
from crabs.baselines.sqrl import SQRL, train_sqrl

BASELINES = {"sac": train_sac_penalty, "cpo": train_cpo, "recovery_rl": train_recovery_rl, "sqrl": train_sqrl}
LEARNERS: dict[str, type[Learner]] = {"sac": SACPenalty, "cpo": CPO, "recovery_rl": RecoveryRL, "sqrl": SQRL}
assert tuple(BASELINES) == ALGORITHMS

__all__ = ["ALGORITHMS", "BASELINES", "CPO", "LEARNERS", "SQRL", "BaselineConfig", "Learner", "RecoveryRL",
           "RiskConfig", "SACPenalty", "load_baseline_config", "train_baseline", "train_cpo",
           "train_recovery_rl", "train_sac_penalty", "train_sqrl"]
