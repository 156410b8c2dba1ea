"""The reduced Upright run the tests train (a few seconds): one copy, shared by the test modules."""

TINY = {
    "task": "upright", "epochs": 2, "init_episodes": 2, "init_noise": 0.1,
    "dynamics": {"hidden": [32, 32], "init_steps": 300, "steps_per_epoch": 100},
    "barrier": {"hidden": [32, 32], "init_samples": 2048, "init_rollout_steps": 60, "init_fit_steps": 300,
                "pretrain_steps": 400, "max_steps": 300, "quiet_steps": 20, "delivery_audit": 5000},
    "mala": {"chains": 128},
    "sac": {"hidden": [64, 64], "critic_hidden": [32, 32], "steps_per_epoch": 60, "batch": 64},
}
