"""The baselines of the paper's Sec. 6, run through the same safety monitor as CRABS, so their
violations are counted the same way (every real step, evaluation included).

* ``sac_penalty``: Soft Actor-Critic with learned temperature, started from the task's safe initial
  policy, with a penalty for a violation (App. C.3: penalty 30, chosen from 3, 10, 30, 100).
"""

from crabs.baselines.sac_penalty import SACPenaltyConfig, load_sac_config, train_sac_penalty

BASELINES = {"sac": train_sac_penalty}

__all__ = ["BASELINES", "SACPenaltyConfig", "load_sac_config", "train_sac_penalty"]
