"""crabs: Co-trained Barrier Certificate for Safe RL (Luo & Ma, NeurIPS 2021)."""

__version__ = "0.1.0"

from crabs import (
    config,  # noqa: E402,F401
    envs,  # noqa: E402,F401  (registers the crabs/... Gymnasium ids)
)
from crabs.envs import TASKS, get_task, make_env  # noqa: E402,F401
from crabs.loop import NoCertificateWarning, train  # noqa: E402,F401
from crabs.system import System  # noqa: E402,F401
