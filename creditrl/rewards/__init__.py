"""Reward functions and the manager that scores batches safely. Importing registers every reward."""

from creditrl.rewards import numeric  # noqa: F401  (registers rewards)
from creditrl.rewards.base import (
    REWARDS,
    RewardBatch,
    RewardManager,
    RewardResult,
    RewardSample,
    build_rewards,
)

__all__ = ["REWARDS", "RewardBatch", "RewardManager", "RewardResult", "RewardSample", "build_rewards"]
