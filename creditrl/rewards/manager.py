"""`RewardManager`: scores batches with a weighted sum of reward functions, concurrently and never raising.

    manager = RewardManager.from_config(cfg.reward)      # builds the functions, starts the worker pool
    batch = manager.score(samples)                       # RewardBatch, in input order
    for s in manager.stream(samples): ...                # ScoredSample, as samples finish

The score of sample i is `R_i = Σ_k w_k · r_k(sample_i)` over `reward.fns`. Per-sample functions run in the
executor (serial, process pool or Ray actors; see executor.py). Batched functions (a reward model, a TRL-style
`f(prompts, completions, **columns)`) run once per batch in this process before the per-sample stream starts,
with `timeout_s` x the batch size as their limit. A failure (exception, timeout, dead worker, NaN / Inf
score) scores 0 for that function, is logged with the sample id and counted in `reward/failures` and
`reward/failures/<name>`; non-finite scores also in `reward/nonfinite/<name>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from creditrl.rewards.base import (
    RewardBatch,
    RewardConfigError,
    RewardResult,
    NONFINITE_REASON,
    RewardSample,
    WeightedReward,
    build_rewards,
    checked,
    failure,
)
from creditrl.rewards.config import RewardConfig
from creditrl.rewards.executor import ExecutorKind, RewardExecutor, make_executor
from creditrl.rewards.timeouts import RewardTimeout, deadline


@dataclass
class ScoredSample:
    index: int  # position of the sample in the request
    score: float  # weighted sum
    components: dict[str, float]  # name -> unweighted score
    reasons: list[str] = field(default_factory=list)  # "name: reason" for each non-empty reason
    failed: list[str] = field(default_factory=list)  # names of the functions that failed on this sample
    nonfinite: list[str] = field(default_factory=list)  # those of them that returned a NaN / Inf score


def _batched_results(r: WeightedReward, samples: list[RewardSample], timeout_s: float | None) -> list[RewardResult]:
    """A batched reward on the whole batch, within `timeout_s` per sample; if it raises or runs out of time,
    every sample fails for this function. A `RewardConfigError` (the function can not be called with this data,
    e.g. a parameter no dataset column fills) is raised: every step would fail alike."""
    limit = None if timeout_s is None else timeout_s * max(len(samples), 1)
    try:
        with deadline(limit):
            values = r.fn.score_batch(samples)
        if len(values) != len(samples):
            raise ValueError(f"score_batch returned {len(values)} scores for {len(samples)} samples")
        return [checked(r.name, s.sample_id, v) for s, v in zip(samples, values)]
    except RewardConfigError:
        raise
    except RewardTimeout:
        return [failure(r.name, s.sample_id, f"timeout after {limit:.3g}s (the batch)") for s in samples]
    except Exception as e:  # noqa: BLE001 - a reward must never crash the run
        return [failure(r.name, s.sample_id, f"error: {type(e).__name__}: {e}") for s in samples]


class RewardManager:
    """Scores batches of samples with a weighted sum of reward functions (see module docstring)."""

    def __init__(self, rewards: list[WeightedReward], executor: ExecutorKind = "serial", workers: int = 1,
                 timeout_s: float | None = None):
        if not rewards:
            raise ValueError("reward.fns is empty: name at least one reward function")
        self.rewards = rewards
        self.timeout_s = timeout_s
        self.batched = [r for r in rewards if r.batched]
        self.per_sample = [r for r in rewards if not r.batched]
        self.executor: RewardExecutor | None = (
            make_executor(executor, self.per_sample, workers, timeout_s) if self.per_sample else None)

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> "RewardManager":
        """Build the functions of `reward.fns` and the executor; option errors surface here, at start-up."""
        manager = cls(build_rewards(cfg.fns), cfg.executor, cfg.workers, cfg.timeout_s)
        start = getattr(manager.executor, "start", None)
        if start is not None:
            start()
        return manager

    def stream(self, samples: list[RewardSample]) -> Iterator[ScoredSample]:
        """Scores as samples finish (completion order, not input order)."""
        batched = {r.name: _batched_results(r, samples, self.timeout_s) for r in self.batched}
        if self.executor is None:
            per_sample_iter = ((i, []) for i in range(len(samples)))
        else:
            per_sample_iter = self.executor.map_unordered(samples)
        for i, results in per_sample_iter:
            named = dict(zip((r.name for r in self.per_sample), results))
            named.update({name: res[i] for name, res in batched.items()})
            yield self._combine(i, named)

    def _combine(self, index: int, named: dict[str, RewardResult]) -> ScoredSample:
        out = ScoredSample(index, 0.0, {})
        for r in self.rewards:  # config order
            res = named[r.name]
            out.components[r.name] = res.score
            out.score += r.weight * res.score
            if res.reason:
                out.reasons.append(f"{r.name}: {res.reason}")
            if res.failed:
                out.failed.append(r.name)
                if res.reason.startswith(NONFINITE_REASON):
                    out.nonfinite.append(r.name)
        return out

    def score(self, samples: list[RewardSample]) -> RewardBatch:
        """Scores of the whole batch, in input order."""
        n = len(samples)
        scores = [0.0] * n
        components = {r.name: [0.0] * n for r in self.rewards}
        reasons: list[list[str]] = [[] for _ in range(n)]
        failures_by_fn = {r.name: 0 for r in self.rewards}
        nonfinite_by_fn = {r.name: 0 for r in self.rewards}
        for s in self.stream(samples):
            scores[s.index] = s.score
            reasons[s.index] = s.reasons
            for name, v in s.components.items():
                components[name][s.index] = v
            for name in s.failed:
                failures_by_fn[name] += 1
            for name in s.nonfinite:
                nonfinite_by_fn[name] += 1
        return RewardBatch(scores, components, reasons, sum(failures_by_fn.values()), failures_by_fn,
                           nonfinite_by_fn)

    def close(self) -> None:
        """Stop the worker processes / actors (safe to call twice)."""
        if self.executor is not None:
            self.executor.close()

    def __enter__(self) -> "RewardManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
