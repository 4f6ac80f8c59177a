"""The rewards interface: a reward function scores one sample; `RewardManager` (manager.py) scores batches.

A reward function takes a `RewardSample` and returns a float or a `RewardResult` (score plus a reason).
Reward functions are registered by name with a typed config:

    @REWARDS.register("numeric_answer", NumericAnswerConfig)
    def build(cfg) -> RewardFn: ...

A reward that is much faster on a whole batch (a reward model on a GPU) returns an object with a
`score_batch(samples) -> list[float | RewardResult]` method as well (`BatchRewardFn`); the manager calls it once
per batch in the driver process instead of once per sample in the worker pool.

A recipe combines several with weights (`reward.fns`). A function that raises, times out or returns a non-finite
score (NaN, +-Inf) is scored 0 as a failure (`failed=True`), logged with the sample id and counted in the metrics
(`reward/failures`, `reward/failures/<name>`, and for non-finite scores also `reward/nonfinite/<name>`); it never
crashes the run and never makes `reward/mean` non-finite.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from creditrl.registry import PartSpec, Registry
from creditrl.rewards.timeouts import RewardTimeout, deadline

log = logging.getLogger(__name__)


@dataclass
class RewardSample:
    """One generated response to score."""

    sample_id: str  # stable id for logs, e.g. "step12/p3/s5"
    prompt: str
    response: str  # decoded response text (special tokens stripped)
    answer: str  # ground truth from the dataset's answer field
    truncated: bool = False  # the response hit max_new_tokens without EOS
    meta: dict[str, Any] = field(default_factory=dict)  # every column of the dataset row (nested values as-is)
    response_tokens: int | None = None  # valid response length |y| in tokens (length shaping needs it)
    messages: list[dict[str, str]] | None = None  # the prompt as a conversation (chat data), before templating
    response_ids: list[int] | None = None  # the response's token ids (TRL's `completion_ids`)


@dataclass
class RewardResult:
    score: float
    reason: str = ""  # why (mostly for 0): "no answer found", "wrong answer", "error: ..."
    failed: bool = False  # the function raised or timed out


RewardFn = Callable[[RewardSample], "float | RewardResult"]
REWARDS: Registry[RewardFn] = Registry("reward function")


@runtime_checkable
class BatchRewardFn(Protocol):
    """A reward scored a batch at a time (e.g. a reward model); still callable on one sample."""

    def __call__(self, sample: RewardSample) -> float | RewardResult: ...

    def score_batch(self, samples: list[RewardSample]) -> list[float | RewardResult]: ...


class RewardConfigError(ValueError):
    """A reward function can not be built from its options; the message says what to fix."""


def as_result(value: float | RewardResult) -> RewardResult:
    if isinstance(value, RewardResult):
        return value
    if not isinstance(value, numbers.Real):
        raise TypeError(f"a reward function must return a float or a RewardResult, got {type(value).__name__}")
    return RewardResult(float(value))


NONFINITE_REASON = "non-finite score"  # the reason of a failure for a NaN / Inf score starts with this


def checked(name: str, sample_id: str, value: float | RewardResult) -> RewardResult:
    """`as_result(value)`, or a failure if its score is not finite (NaN / Inf): a reward that returns NaN would
    otherwise make the batch's rewards, advantages and every loss NaN (every optimizer step skipped)."""
    res = as_result(value)
    if not math.isfinite(res.score):
        return failure(name, sample_id, f"{NONFINITE_REASON} {res.score!r}")
    return res


def failure(name: str, sample_id: str, reason: str) -> RewardResult:
    """A failed call: score 0, logged with the sample id."""
    log.warning("reward '%s' failed on sample %s: %s", name, sample_id, reason)
    return RewardResult(0.0, reason=reason, failed=True)


def safe_call(fn: RewardFn, sample: RewardSample, name: str, timeout_s: float | None = None) -> RewardResult:
    """Call a reward function; an exception, a timeout or a non-finite score scores 0 with a reason (logged,
    never raised).

    `timeout_s` is enforced with SIGALRM when called in the main thread (see timeouts.py); the worker pools
    also enforce it from outside by killing the worker.
    """
    try:
        with deadline(timeout_s):
            return checked(name, sample.sample_id, fn(sample))
    except RewardTimeout:
        return failure(name, sample.sample_id, f"timeout after {timeout_s:.3g}s")
    except Exception as e:  # noqa: BLE001 - a user's reward must never crash the run
        return failure(name, sample.sample_id, f"error: {type(e).__name__}: {e}")


@dataclass
class WeightedReward:
    name: str
    weight: float
    fn: RewardFn
    spec: PartSpec | None = None  # how to rebuild `fn` in a worker process (None: it is pickled instead)

    @property
    def batched(self) -> bool:
        return isinstance(self.fn, BatchRewardFn)


@dataclass
class RewardBatch:
    scores: list[float]  # [B] weighted sum over the reward functions
    components: dict[str, list[float]]  # name -> [B] unweighted score of each function
    reasons: list[list[str]]  # [B] non-empty reasons of each sample
    failures: int  # number of (sample, function) calls that failed (raised, timed out, non-finite score)
    failures_by_fn: dict[str, int] = field(default_factory=dict)  # name -> failures of that function
    nonfinite_by_fn: dict[str, int] = field(default_factory=dict)  # name -> those of them with a NaN / Inf score

    def metrics(self) -> dict[str, float]:
        n = max(len(self.scores), 1)
        out = {"reward/mean": sum(self.scores) / n, "reward/failures": float(self.failures)}
        for name, vals in self.components.items():
            out[f"reward/{name}"] = sum(vals) / n
        for name, count in self.failures_by_fn.items():
            if count:
                out[f"reward/failures/{name}"] = float(count)
        for name, count in self.nonfinite_by_fn.items():
            if count:
                out[f"reward/nonfinite/{name}"] = float(count)
        return out


def component_name(spec: PartSpec, taken: set[str]) -> str:
    """The metric name of a reward in `reward.fns`: its name, or name_2, name_3 when a name repeats."""
    name, k = spec.name, 2
    while name in taken:
        name, k = f"{spec.name}_{k}", k + 1
    return name


def build_rewards(specs: list[PartSpec]) -> list[WeightedReward]:
    """Build the weighted reward functions of `reward.fns` (each spec carries its `weight`).

    Building is where options are checked (a missing model directory, a user function with a wrong signature,
    a sandbox that can not isolate code): the errors surface at start-up, not at the first step.
    """
    out: list[WeightedReward] = []
    taken: set[str] = set()
    for s in specs:
        name = component_name(s, taken)
        taken.add(name)
        out.append(WeightedReward(name, s.weight, REWARDS.build(s.name, s.options), s))
    return out
