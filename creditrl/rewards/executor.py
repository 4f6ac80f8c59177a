"""Where per-sample reward functions run: serially in this process, in a process pool, or in Ray actors.

Every executor yields `(sample index, results)` as samples finish (not in input order), where `results` holds
one `RewardResult` per reward function. Each sample gets a time budget of `timeout_s` for all its functions:
inside the process that runs them it is enforced with SIGALRM (`safe_call`); the pools also enforce it from
outside (kill and replace the worker after `timeout_s + grace`), which catches code that ignores signals.
A failed or timed-out call scores 0 with `failed=True`; it never raises.
"""

from __future__ import annotations

import time
from typing import Iterator, Literal, Protocol

from creditrl.rewards.base import RewardResult, RewardSample, WeightedReward, failure, safe_call

ExecutorKind = Literal["serial", "process", "ray"]
SampleResults = tuple[int, list[RewardResult]]  # (index of the sample in the request, one result per fn)


def score_sample(rewards: list[WeightedReward], sample: RewardSample, timeout_s: float | None) -> list[RewardResult]:
    """Every reward function on one sample; together they share the sample's `timeout_s` budget."""
    start = time.monotonic()
    out = []
    for r in rewards:
        left = None if timeout_s is None else timeout_s - (time.monotonic() - start)
        if left is not None and left <= 0:
            out.append(failure(r.name, sample.sample_id, f"timeout: the sample's {timeout_s:g}s budget is used up"))
        else:
            out.append(safe_call(r.fn, sample, r.name, left))
    return out


def failed_results(rewards: list[WeightedReward], sample: RewardSample, why: str) -> list[RewardResult]:
    """Results of a sample whose worker was killed, died or could not be reached: every function failed."""
    return [failure(r.name, sample.sample_id, why) for r in rewards]


class RewardExecutor(Protocol):
    def map_unordered(self, samples: list[RewardSample]) -> Iterator[SampleResults]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs the reward functions in the calling process, one sample after another."""

    def __init__(self, rewards: list[WeightedReward], timeout_s: float | None = None):
        self.rewards = rewards
        self.timeout_s = timeout_s

    def map_unordered(self, samples: list[RewardSample]) -> Iterator[SampleResults]:
        for i, s in enumerate(samples):
            yield i, score_sample(self.rewards, s, self.timeout_s)

    def close(self) -> None:
        pass


def make_executor(kind: ExecutorKind, rewards: list[WeightedReward], workers: int,
                  timeout_s: float | None) -> RewardExecutor:
    if kind == "serial":
        return SerialExecutor(rewards, timeout_s)
    if kind == "process":
        from creditrl.rewards.process_pool import RewardProcessPool

        return RewardProcessPool(rewards, workers, timeout_s)
    if kind == "ray":
        from creditrl.rewards.ray_pool import RayRewardPool

        return RayRewardPool(rewards, workers, timeout_s)
    raise ValueError(f"unknown reward executor '{kind}'; choose serial, process or ray")
