"""Reward faults: every executor bounds a call stuck in C code; NaN / Inf scores are counted failures."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from creditrl.registry import PartSpec
from creditrl.rewards import RewardConfig, RewardManager, RewardSample, WeightedReward
from creditrl.rewards.custom import CustomRewardConfig
from creditrl.rewards.executor import SerialExecutor, default_grace

FNS = str(Path(__file__).with_name("fault_fns.py"))


def custom(fn: str, weight: float = 1.0) -> PartSpec:
    return PartSpec("custom", CustomRewardConfig(f"{FNS}:{fn}", {}), weight)


def samples(responses: list[str]) -> list[RewardSample]:
    return [RewardSample(f"step0/p0/s{i}", "2+2=", r, "4") for i, r in enumerate(responses)]


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_reward_stuck_in_c_code_is_bounded(executor):
    """`sum(range(10**12))` ignores SIGALRM (C code); with timeout_s=1 the batch still ends in a few seconds,
    the stuck call is a failure, and the executor keeps working (the worker was replaced)."""
    with RewardManager.from_config(RewardConfig(fns=[custom("c_hang")], executor=executor, workers=1,
                                                timeout_s=1.0)) as m:
        start = time.monotonic()
        batch = m.score(samples(["hang", "fine"]))
        elapsed = time.monotonic() - start
        assert elapsed < 1.0 + default_grace(1.0) + 3.0, elapsed  # limit + grace + a worker restart
        assert batch.scores == [0.0, 1.0]
        assert batch.failures == 1 and "timeout" in batch.reasons[0][0]
        assert batch.metrics()["reward/failures/custom"] == 1.0
        assert m.score(samples(["fine"])).scores == [1.0]  # the replacement worker scores


def test_serial_runs_in_a_worker_with_a_timeout_and_in_process_without():
    spec_built = RewardManager.from_config(RewardConfig(fns=[custom("c_hang")], executor="serial", timeout_s=5.0))
    try:
        assert isinstance(spec_built.executor, SerialExecutor) and not spec_built.executor.in_process
    finally:
        spec_built.close()
    with RewardManager.from_config(RewardConfig(fns=[custom("c_hang")], executor="serial", timeout_s=None)) as m:
        assert m.executor.in_process and m.score(samples(["fine"])).scores == [1.0]


def test_serial_falls_back_in_process_for_a_function_that_can_not_be_sent(caplog):
    """A hand-built closure (no spec, not picklable): it still runs, in process, with a warning saying that only
    SIGALRM bounds it."""
    offset = 0.5
    with RewardManager([WeightedReward("local", 1.0, lambda s: offset)], executor="serial", timeout_s=5.0) as m:
        assert m.executor.in_process
        assert m.score(samples(["x"])).scores == [0.5]
    assert "only SIGALRM" in caplog.text


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_non_finite_scores_are_counted_failures(executor):
    fns = [custom("non_finite"), custom("nan_result", 0.5), PartSpec("numeric_answer", None, 1.0)]
    with RewardManager.from_config(RewardConfig(fns=fns, executor=executor, workers=2, timeout_s=30)) as m:
        batch = m.score(samples(["nan", "inf", "-inf", "4"]))
    assert batch.components["custom"] == [0.0, 0.0, 0.0, 1.0]
    assert batch.components["custom_2"] == [0.0] * 4
    assert batch.scores == [0.0, 0.0, 0.0, 2.0]  # numeric_answer scores the last one
    metrics = batch.metrics()
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["reward/mean"] == 0.5
    assert metrics["reward/failures"] == 7.0
    assert metrics["reward/failures/custom"] == 3.0 and metrics["reward/nonfinite/custom"] == 3.0
    assert metrics["reward/failures/custom_2"] == 4.0 and metrics["reward/nonfinite/custom_2"] == 4.0
    assert "reward/nonfinite/numeric_answer" not in metrics
    assert batch.reasons[0][0] == "custom: non-finite score nan"


def test_non_finite_scores_of_a_batched_reward_fail_only_those_samples():
    class Batched:
        def __call__(self, sample):
            return self.score_batch([sample])[0]

        def score_batch(self, batch):
            return [math.nan if s.response == "bad" else 1.0 for s in batch]

    with RewardManager([WeightedReward("rm", 1.0, Batched())]) as m:
        batch = m.score(samples(["ok", "bad", "ok"]))
    assert batch.scores == [1.0, 0.0, 1.0]
    assert batch.failures_by_fn == {"rm": 1} and batch.nonfinite_by_fn == {"rm": 1}
