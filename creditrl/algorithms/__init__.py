"""Pure tensor math of RL algorithms: advantage estimators, policy losses, token weights, regularisers.

No Ray or DeepSpeed imports here. Importing this package registers every part (see `registry.py`).
"""

from creditrl.algorithms import entropy, grpo, kl, ppo_clip  # noqa: F401  (register parts)
from creditrl.algorithms.compose import Algorithm, AlgorithmConfig, KLConfig
from creditrl.algorithms.registry import ADVANTAGES, POLICY_LOSSES, REGULARIZERS, TOKEN_WEIGHTS

__all__ = [
    "ADVANTAGES",
    "POLICY_LOSSES",
    "REGULARIZERS",
    "TOKEN_WEIGHTS",
    "Algorithm",
    "AlgorithmConfig",
    "KLConfig",
]
