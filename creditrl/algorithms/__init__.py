"""Pure tensor math of RL algorithms: advantage estimators, policy losses, token weights, regularisers.

No Ray or DeepSpeed imports here. Importing this package registers every part (see `registry.py`).
"""

from creditrl.algorithms import entropy, grpo, kl, ppo_clip  # noqa: F401  (register parts)
from creditrl.algorithms import cispo, clip_cov, dcpo_clip, dcpo_sas, gspo, kl_cov, reinforce_pp, rloo  # noqa: F401
from creditrl.algorithms import gmpo, gpg, sapo  # noqa: F401  (issue 14 losses)
from creditrl.algorithms import gae  # noqa: F401  (issue 14: PPO with a learned critic)
from creditrl.algorithms import icepop, minpro, tis  # noqa: F401  (mismatch corrections)
from creditrl.algorithms import entropy_mask, hapo_advantage, hapo_clip, hapo_redistribution  # noqa: F401  (token level)
from creditrl.algorithms import lp_reg, nthr, steer, thr  # noqa: F401  (token-level credit assignment)
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
