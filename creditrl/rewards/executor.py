"""Where per-sample reward functions run: serially (one sample after another), in a process pool, or in Ray actors.

Every executor yields `(sample index, results)` as samples finish (not in input order), where `results` holds
one `RewardResult` per reward function. Each sample gets a time budget of `timeout_s` for all its functions:
inside the process that runs them it is enforced with SIGALRM (`safe_call`), and every executor also enforces
it from outside (kill and replace the worker after `timeout_s + grace`, `default_grace`), which is the only
thing that stops code stuck in C (`sum(range(10**12))`, a catastrophic regex, a huge big-int power: SIGALRM's
Python handler only runs between bytecodes) or code that blocks the signal.

The serial executor therefore runs its functions in ONE persistent child process (a one-worker
`RewardProcessPool`) whenever a timeout is set: same order and results as in-process, ~0.2 s to start, some
tens of microseconds of pipe traffic per sample, and a hang in C code costs one worker restart instead of the
run. It runs them in the calling process only when no timeout is asked for (`reward.timeout_s: null`: nothing
to enforce; handy under a debugger), or when a function can not be sent to a worker (built by hand without a
spec and not picklable; then only SIGALRM applies, with a warning).
A failed or timed-out call scores 0 with `failed=True`; it never raises.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator, Literal, Protocol

from creditrl.rewards.base import RewardConfigError, RewardResult, RewardSample, WeightedReward, failure, safe_call

log = logging.getLogger(__name__)

ExecutorKind = Literal["serial", "process", "ray"]
SampleResults = tuple[int, list[RewardResult]]  # (index of the sample in the request, one result per fn)


def default_grace(timeout_s: float | None) -> float:
    """Seconds a worker gets past `timeout_s` to report a (SIGALRM) timeout itself before it is killed: long
    enough for the in-process timeout to win when the code is interruptible, short for short timeouts (0.5 s
    at timeout_s <= 0.5, timeout_s up to 5 s, then 5 s)."""
    return 5.0 if timeout_s is None else min(5.0, max(0.5, float(timeout_s)))


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
    """One sample after another: in one persistent worker process when `timeout_s` is set (so the time limit
    holds for code stuck in C too), else in the calling process (see the module docstring)."""

    def __init__(self, rewards: list[WeightedReward], timeout_s: float | None = None):
        from creditrl.rewards.process_pool import RewardProcessPool

        self.rewards = rewards
        self.timeout_s = timeout_s
        self._pool: RewardProcessPool | None = None
        if timeout_s is not None:
            try:
                self._pool = RewardProcessPool(rewards, 1, timeout_s)
            except RewardConfigError as e:  # a hand-built function that can not be sent to a worker
                log.warning("reward.executor serial: running the reward functions in this process, where only "
                            "SIGALRM enforces reward.timeout_s (code stuck in C can not be interrupted): %s", e)

    @property
    def in_process(self) -> bool:
        """True when the functions run in the calling process (no timeout, or not sendable to a worker)."""
        return self._pool is None

    def start(self) -> None:
        """Start the worker process (a no-op in process); errors of the reward options surface here."""
        if self._pool is not None:
            self._pool.start()

    def map_unordered(self, samples: list[RewardSample]) -> Iterator[SampleResults]:
        if self._pool is not None:
            yield from self._pool.map_unordered(samples)
            return
        for i, s in enumerate(samples):
            yield i, score_sample(self.rewards, s, self.timeout_s)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


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
