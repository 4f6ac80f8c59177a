"""The Ray actor pool: same results as serial, streaming, hard timeouts, dead actors (slow: starts Ray)."""

import time
from pathlib import Path

import pytest

from creditrl.registry import PartSpec
from creditrl.rewards import RewardConfig, RewardManager, RewardResult, RewardSample
from creditrl.rewards.base import build_rewards
from creditrl.rewards.custom import CustomRewardConfig

pytestmark = pytest.mark.slow
FNS = str(Path(__file__).with_name("reward_fns.py"))


def custom(fn: str, weight: float = 1.0, **kwargs) -> PartSpec:
    return PartSpec("custom", CustomRewardConfig(f"{FNS}:{fn}", kwargs), weight)


def samples(responses):
    return [RewardSample(f"s{i}", "2+2=", r, "4") for i, r in enumerate(responses)]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_needs_a_running_cluster():
    import ray

    if ray.is_initialized():
        pytest.skip("a cluster is already running")
    with pytest.raises(RuntimeError, match="needs a running Ray cluster"):
        RewardManager(build_rewards([custom("const")]), executor="ray")


def test_same_batch_as_serial(ray_cluster):
    fns = [PartSpec("numeric_answer", None, 1.0), custom("length", 0.1), custom("boom", 0.5)]
    batch_in = samples(["4", "x = 5", "The answer is 4.", "12"])
    with RewardManager.from_config(RewardConfig(fns=fns, executor="serial")) as m:
        serial = m.score(batch_in)
    with RewardManager.from_config(RewardConfig(fns=fns, executor="ray", workers=2)) as m:
        ray_batch = m.score(batch_in)
    assert ray_batch == serial and ray_batch.failures == 4


def test_streams_and_kills_stuck_actors(ray_cluster):
    from creditrl.rewards.ray_pool import RayRewardPool

    pool = RayRewardPool(build_rewards([custom("deaf_sleeper")]), workers=2, timeout_s=0.5, grace_s=1.0)
    try:
        start = time.monotonic()
        order = list(pool.map_unordered(samples(["sleep:60", "fast", "fast"])))
        assert time.monotonic() - start < 30
        assert order[-1][0] == 0
        assert order[-1][1][0].failed and "actor killed" in order[-1][1][0].reason
        assert dict(order)[1] == [RewardResult(1.0)]
        assert dict(pool.map_unordered(samples(["fast", "fast"]))) == {0: [RewardResult(1.0)], 1: [RewardResult(1.0)]}
    finally:
        pool.close()


def test_dead_actor_fails_only_its_sample(ray_cluster):
    with RewardManager(build_rewards([custom("crash")]), executor="ray", workers=2) as m:
        batch = m.score(samples(["ok", "crash", "ok"]))
    assert batch.scores == [1.0, 0.0, 1.0]
    assert "reward actor failed" in batch.reasons[1][0]


def test_reward_stuck_in_c_code_is_bounded(ray_cluster):
    """`sum(range(10**12))` (C code: SIGALRM can not interrupt it) with timeout_s=1: the actor is killed after
    timeout + grace (1 + 1 s), the call is a failure, the replacement actor scores."""
    from creditrl.rewards.executor import default_grace

    fault_fns = str(Path(__file__).with_name("fault_fns.py"))
    spec = PartSpec("custom", CustomRewardConfig(f"{fault_fns}:c_hang", {}), 1.0)
    with RewardManager.from_config(RewardConfig(fns=[spec], executor="ray", workers=1, timeout_s=1.0)) as m:
        start = time.monotonic()
        batch = m.score(samples(["hang", "fine"]))
        assert time.monotonic() - start < 1.0 + default_grace(1.0) + 20  # + a new actor's start-up
        assert batch.scores == [0.0, 1.0] and batch.failures == 1 and "timeout" in batch.reasons[0][0]
