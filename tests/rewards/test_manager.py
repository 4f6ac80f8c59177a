"""RewardManager: weighted composition, failure accounting, executors (serial vs process), streaming, timeouts."""

import logging
import time
from pathlib import Path

import pytest

from creditrl.registry import PartSpec
from creditrl.rewards import RewardConfig, RewardConfigError, RewardManager, RewardResult, RewardSample, WeightedReward
from creditrl.rewards.custom import CustomRewardConfig
from creditrl.rewards.process_pool import RewardProcessPool
from creditrl.rewards.shaping import FormatTagsConfig

FNS = str(Path(__file__).with_name("reward_fns.py"))


def custom(fn: str, weight: float = 1.0, **kwargs) -> PartSpec:
    return PartSpec("custom", CustomRewardConfig(f"{FNS}:{fn}", kwargs), weight)


def samples(responses: list[str], answer: str = "4") -> list[RewardSample]:
    return [RewardSample(f"step0/p0/s{i}", "2+2=", r, answer) for i, r in enumerate(responses)]


def manager(fns: list[PartSpec], **kw) -> RewardManager:
    return RewardManager.from_config(RewardConfig(fns=fns, **kw))


def test_weighted_sum_and_components():
    fns = [PartSpec("numeric_answer", None, 1.0), custom("const", 2.0, value=0.25),
           PartSpec("format_tags", FormatTagsConfig(tags=["answer"]), 0.5)]
    with manager(fns, executor="serial") as m:
        batch = m.score(samples(["<answer>4</answer>", "5", "<answer>3</answer>"]))
    # hand-computed: numeric + 2 * 0.25 + 0.5 * format
    assert batch.components == {"numeric_answer": [1.0, 0.0, 0.0], "custom": [0.25] * 3,
                                "format_tags": [1.0, 0.0, 1.0]}
    assert batch.scores == pytest.approx([2.0, 0.5, 1.0])
    assert batch.failures == 0
    assert batch.reasons[1] == ["numeric_answer: wrong answer", "format_tags: <answer> missing, repeated or unclosed"]
    metrics = batch.metrics()
    assert metrics["reward/mean"] == pytest.approx(3.5 / 3)
    assert metrics["reward/format_tags"] == pytest.approx(2 / 3)


def test_repeated_names_get_distinct_components():
    with manager([custom("const", value=1.0), custom("const", value=2.0)], executor="serial") as m:
        batch = m.score(samples(["x"]))
    assert batch.components == {"custom": [1.0], "custom_2": [2.0]}


def test_failures_score_zero_are_logged_with_the_sample_id_and_counted(caplog, capfd):
    with manager([custom("boom"), custom("returns_text"), custom("const", 0.5, value=1.0)], executor="serial") as m:
        with caplog.at_level(logging.WARNING):
            batch = m.score(samples(["a", "b"]))
    logged = caplog.text + capfd.readouterr().err  # the serial executor's worker process logs to stderr
    assert batch.scores == [0.5, 0.5]
    assert batch.failures == 4
    assert batch.metrics()["reward/failures"] == 4.0
    assert batch.metrics()["reward/failures/custom"] == 2.0
    assert "RuntimeError: boom on step0/p0/s1" in batch.reasons[1][0]
    assert "must return a float" in batch.reasons[0][1]
    assert "step0/p0/s0" in logged and "step0/p0/s1" in logged


def test_process_pool_gives_the_same_batch_as_serial():
    fns = [PartSpec("numeric_answer", None, 1.0), custom("length", 0.1), custom("with_reason", 0.5)]
    batch_in = samples(["4", "x = 5", "The answer is 4.", "4", "", "12"], answer="4")
    with manager(fns, executor="serial") as m:
        serial = m.score(batch_in)
    with manager(fns, executor="process", workers=2) as m:
        parallel = m.score(batch_in)
    assert parallel == serial


def test_results_stream_as_samples_finish():
    with manager([custom("sleepy")], executor="process", workers=2) as m:
        order = [s.index for s in m.stream(samples(["sleep:1.0", "fast", "fast", "fast"]))]
    assert sorted(order) == [0, 1, 2, 3]
    assert order[-1] == 0  # the slow sample finishes last although it was sent first


def test_soft_timeout_in_a_worker():
    with manager([custom("sleepy"), custom("const", value=1.0)], executor="process", workers=1, timeout_s=0.5) as m:
        start = time.monotonic()
        batch = m.score(samples(["sleep:30", "fast"]))
    assert time.monotonic() - start < 5
    assert batch.components["custom"] == [0.0, 1.0]
    assert batch.failures == 2  # the sleeper, and the function that had no budget left after it
    assert "timeout" in batch.reasons[0][0]


def test_serial_timeout_in_the_main_thread():
    with manager([custom("sleepy")], executor="serial", timeout_s=0.3) as m:
        start = time.monotonic()
        batch = m.score(samples(["sleep:30"]))
    assert time.monotonic() - start < 3
    assert batch.failures == 1 and "timeout after 0.3s" in batch.reasons[0][0]


def test_hard_timeout_kills_and_replaces_the_worker():
    from creditrl.rewards.base import build_rewards

    rewards = build_rewards([custom("deaf_sleeper")])
    pool = RewardProcessPool(rewards, workers=1, timeout_s=0.3, grace_s=0.5)
    try:
        start = time.monotonic()
        results = dict(pool.map_unordered(samples(["sleep:60", "fast", "fast"])))
        assert time.monotonic() - start < 10
        assert results[0][0].failed and "worker killed after 0.8s" in results[0][0].reason
        assert results[1] == [RewardResult(1.0)] and results[2] == [RewardResult(1.0)]  # the new worker works
    finally:
        pool.close()


def test_a_hang_inside_a_chunk_fails_only_that_sample():
    """12 samples on one worker go out in chunks of 3; the worker hangs on the 5th (a chunk's middle) with SIGALRM
    blocked: only that sample fails, the ones queued behind it in the dead worker's pipe are scored by the next."""
    from creditrl.rewards.base import build_rewards

    pool = RewardProcessPool(build_rewards([custom("deaf_sleeper")]), workers=1, timeout_s=0.3, grace_s=0.5)
    try:
        start = time.monotonic()
        results = dict(pool.map_unordered(samples(["fast"] * 4 + ["sleep:60"] + ["fast"] * 7)))
        assert time.monotonic() - start < 10
        assert sorted(results) == list(range(12))
        assert results[4][0].failed and "worker killed after 0.8s" in results[4][0].reason
        assert all(results[i] == [RewardResult(1.0)] for i in range(12) if i != 4)
    finally:
        pool.close()


def test_a_crash_inside_a_chunk_fails_only_that_sample():
    with manager([custom("crash")], executor="serial") as m:  # one worker, chunks of 2
        batch = m.score(samples(["ok"] * 5 + ["crash"] + ["ok"] * 2))
    assert batch.scores == [1.0] * 5 + [0.0] + [1.0] * 2
    assert batch.failures == 1 and "reward worker died (exit code 3)" in batch.reasons[5][0]


def test_a_dead_worker_fails_only_its_sample():
    with manager([custom("crash")], executor="process", workers=2) as m:
        batch = m.score(samples(["ok", "crash", "ok", "ok"]))
    assert batch.scores == [1.0, 0.0, 1.0, 1.0]
    assert batch.failures == 1 and "reward worker died (exit code 3)" in batch.reasons[1][0]


def test_stopping_a_stream_early_leaves_the_pool_usable():
    with manager([custom("sleepy")], executor="process", workers=2) as m:
        stream = m.stream(samples(["fast", "sleep:30", "sleep:30"]))
        first = next(stream)
        stream.close()
        assert first.index == 0
        assert m.score(samples(["fast", "fast"])).scores == [1.0, 1.0]


class CountingBatchReward:
    """A batched reward (like a reward model): scores len(response), counts its batch calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, sample):
        return self.score_batch([sample])[0]

    def score_batch(self, batch):
        self.calls += 1
        return [float(len(s.response)) for s in batch]


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_batched_reward_runs_once_per_batch_in_the_driver(executor):
    from creditrl.rewards.base import build_rewards

    rm = CountingBatchReward()
    rewards = [WeightedReward("rm", 0.5, rm)] + build_rewards([custom("const", value=1.0)])
    with RewardManager(rewards, executor=executor, workers=2) as m:
        batch = m.score(samples(["a", "bbb", "cc"]))
    assert rm.calls == 1
    assert batch.components["rm"] == [1.0, 3.0, 2.0]
    assert batch.scores == pytest.approx([1.5, 2.5, 2.0])


def test_batched_reward_error_fails_every_sample():
    class Broken(CountingBatchReward):
        def score_batch(self, batch):
            raise RuntimeError("cuda out of memory")

    with RewardManager([WeightedReward("rm", 1.0, Broken())]) as m:
        batch = m.score(samples(["a", "b"]))
    assert batch.failures == 2 and "cuda out of memory" in batch.reasons[0][0]


def test_start_up_errors_surface_in_from_config():
    with pytest.raises(RewardConfigError, match="threshold"):
        manager([custom("needs_unknown")], executor="process")


def test_bad_manager_arguments():
    with pytest.raises(ValueError, match="empty"):
        RewardManager([])
    with pytest.raises(ValueError, match="workers"):
        RewardConfig(workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        RewardConfig(timeout_s=-1)
    with pytest.raises(ValueError, match="unknown reward executor"):
        RewardManager([WeightedReward("c", 1.0, lambda s: 1.0)], executor="threads")


def test_empty_batch():
    with manager([custom("const")], executor="process") as m:
        batch = m.score([])
    assert batch.scores == [] and batch.metrics()["reward/mean"] == 0.0


def test_unpicklable_sample_fails_alone():
    with manager([custom("const", value=1.0)], executor="process", workers=1) as m:
        batch_in = samples(["a", "b"])
        batch_in[0].meta["handle"] = lambda: None  # can not be sent to a worker
        batch = m.score(batch_in)
    assert batch.scores == [0.0, 1.0]
    assert "could not send the sample" in batch.reasons[0][0]
