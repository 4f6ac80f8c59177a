"""Reward functions and the manager that scores batches safely. Importing registers every reward."""

from creditrl.rewards import code, countdown, custom, math_answer, numeric, reward_model, shaping  # noqa: F401  (registers)
from creditrl.rewards.base import (
    REWARDS,
    RewardBatch,
    RewardConfigError,
    RewardResult,
    RewardSample,
    WeightedReward,
    build_rewards,
)
from creditrl.rewards.config import RewardConfig
from creditrl.rewards.manager import RewardManager, ScoredSample

__all__ = [
    "REWARDS",
    "RewardBatch",
    "RewardConfig",
    "RewardConfigError",
    "RewardManager",
    "RewardResult",
    "RewardSample",
    "ScoredSample",
    "WeightedReward",
    "build_rewards",
]
