"""The `reward:` block of a recipe.

    reward:
      fns:                                   # weighted sum of registered reward functions
        - {name: math_answer, weight: 1.0, extract: [boxed, answer_is]}
        - {name: format_tags, weight: 0.2, tags: [think, answer]}
      executor: process                      # serial | process | ray
      workers: 2
      timeout_s: 60
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from creditrl.registry import PartSpec, parts
from creditrl.rewards.base import REWARDS


@dataclass
class RewardConfig:
    # Weighted sum of registered reward functions: [{name: numeric_answer, weight: 1.0, <options>}, ...]
    fns: list[PartSpec] = parts(REWARDS, weighted=True, default=["numeric_answer"])
    # Where per-sample functions run: one child process (serial, one sample at a time), a pool of worker
    # processes, or Ray actors.
    executor: Literal["serial", "process", "ray"] = "process"
    workers: int = 2  # worker processes / actors (process and ray executors)
    # Time budget of one sample for all its per-sample functions; past it the function scores 0 as a failure.
    # Every executor (serial too) kills and replaces the worker min(5, max(0.5, timeout_s)) s after the budget if
    # the function ignores the alarm (e.g. stuck in C code). null = no limit (serial then runs in this process).
    timeout_s: float | None = 60.0

    def __post_init__(self):
        if not self.fns:
            raise ValueError("reward.fns is empty: name at least one reward function")
        if self.workers < 1:
            raise ValueError(f"reward.workers must be >= 1, got {self.workers}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"reward.timeout_s must be > 0 or null, got {self.timeout_s}")
