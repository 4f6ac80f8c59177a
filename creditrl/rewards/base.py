"""The rewards interface: a reward function scores one sample; `RewardManager` scores a batch safely.

A reward function takes a `RewardSample` and returns a float or a `RewardResult` (score plus a reason).
Reward functions are registered by name with a typed config:

    @REWARDS.register("numeric_answer", NumericAnswerConfig)
    def build(cfg) -> RewardFn: ...

A recipe combines several with weights (`reward.fns`). A function that raises is scored 0, logged with the
sample id and counted in the metrics (`reward/failures`); it never crashes the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from creditrl.registry import PartSpec, Registry

log = logging.getLogger(__name__)


@dataclass
class RewardSample:
    """One generated response to score."""

    sample_id: str  # stable id for logs, e.g. "step12/p3/s5"
    prompt: str
    response: str  # decoded response text (special tokens stripped)
    answer: str  # ground truth from the dataset's answer field
    truncated: bool = False  # the response hit max_new_tokens without EOS
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardResult:
    score: float
    reason: str = ""  # why (mostly for 0): "no answer found", "wrong answer", "error: ..."
    failed: bool = False  # the function raised or timed out


RewardFn = Callable[[RewardSample], "float | RewardResult"]
REWARDS: Registry[RewardFn] = Registry("reward function")


def as_result(value: float | RewardResult) -> RewardResult:
    if isinstance(value, RewardResult):
        return value
    return RewardResult(float(value))


def safe_call(fn: RewardFn, sample: RewardSample, name: str) -> RewardResult:
    """Call a reward function; an exception scores 0 with the error as the reason (logged, never raised)."""
    try:
        return as_result(fn(sample))
    except Exception as e:  # noqa: BLE001 - a user's reward must never crash the run
        log.warning("reward '%s' raised on sample %s: %s: %s", name, sample.sample_id, type(e).__name__, e)
        return RewardResult(0.0, reason=f"error: {type(e).__name__}: {e}", failed=True)


@dataclass
class WeightedReward:
    name: str
    weight: float
    fn: RewardFn


@dataclass
class RewardBatch:
    scores: list[float]  # [B] weighted sum over the reward functions
    components: dict[str, list[float]]  # name -> [B] unweighted score of each function
    reasons: list[list[str]]  # [B] non-empty reasons of each sample
    failures: int  # number of (sample, function) calls that raised or timed out

    def metrics(self) -> dict[str, float]:
        n = max(len(self.scores), 1)
        out = {"reward/mean": sum(self.scores) / n, "reward/failures": float(self.failures)}
        for name, vals in self.components.items():
            out[f"reward/{name}"] = sum(vals) / n
        return out


def build_rewards(specs: list[PartSpec]) -> list[WeightedReward]:
    """Build the weighted reward functions of `reward.fns` (each spec carries its `weight`)."""
    return [WeightedReward(s.name, s.weight, REWARDS.build(s.name, s.options)) for s in specs]


class RewardManager:
    """Scores batches of samples with a weighted sum of reward functions, never raising."""

    def __init__(self, rewards: list[WeightedReward]):
        if not rewards:
            raise ValueError("reward.fns is empty: name at least one reward function")
        self.rewards = rewards

    def score(self, samples: list[RewardSample]) -> RewardBatch:
        components: dict[str, list[float]] = {r.name: [] for r in self.rewards}
        reasons: list[list[str]] = [[] for _ in samples]
        scores = [0.0] * len(samples)
        failures = 0
        for r in self.rewards:
            for i, s in enumerate(samples):
                res = safe_call(r.fn, s, r.name)
                failures += int(res.failed)
                components[r.name].append(res.score)
                scores[i] += r.weight * res.score
                if res.reason:
                    reasons[i].append(f"{r.name}: {res.reason}")
        return RewardBatch(scores, components, reasons, failures)
