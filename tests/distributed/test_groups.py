"""Worker groups on a local Ray instance: weight sync is bit-exact (object store and broadcast), the 2-rank
DeepSpeed learner reproduces the single-process learner, a dead rollout actor is restarted and its prompts
re-run, and the broadcast group survives dead actors.

One module-scoped setup (2 DeepSpeed ZeRO-2 ranks + 2 rollout actors on a random tiny model) is shared by the
tests: about 45 s on 2 cores, most of it actor start-up (importing torch/transformers/DeepSpeed in four
processes, DeepSpeed's shm_comm JIT build on a cold cache).
"""

from __future__ import annotations

import copy

import pytest
import torch

from creditrl.algorithms import Algorithm
from creditrl.config import load_config
from creditrl.rollout.base import SamplingParams
from tests.distributed.conftest import started_groups


def _cfg(tiny_files, *extra):
    return load_config("tiny_grpo_ray", tiny_files.overrides(None, "train.global_batch_prompts=4",
                                                            "rollout.n_samples=4", "rollout.max_new_tokens=6",
                                                            "train.micro_batch_tokens_per_worker=48",
                                                            "train.lr=1e-3", "train.warmup_steps=0",
                                                            "resources.call_timeout_s=300",
                                                            "resources.max_rollout_restarts=10", *extra))


@pytest.fixture(scope="module")
def groups(local_ray, tiny_files):
    from creditrl.distributed.weight_sync import WeightSync
    from creditrl.models.build import load_tokenizer

    cfg = _cfg(tiny_files, "train.skip_old_pass=false")  # the old pass itself is compared below (the on-policy
    tok = load_tokenizer(str(tiny_files.model))          # shortcut: tests/parity/test_on_policy_shortcut.py)
    with started_groups(cfg, tok) as (learner, rollout):
        sync = WeightSync(learner, rollout, bucket_bytes=64 << 10, adapter_only=False)  # small: several buckets
        yield cfg, tok, learner, rollout, sync


def _batch(cfg, tok, tiny_files, engine):
    """A scored RolloutBatch of 4 prompts x 4 samples from `engine`, with non-trivial rewards."""
    from creditrl.data import load_prompt_datasets
    from creditrl.trainer.loop import build_batch

    train, _ = load_prompt_datasets(cfg.data, tok, cfg.seed)
    prompts = [train[i] for i in range(4)]
    out = engine.generate([list(p.prompt_ids) for p in prompts], SamplingParams(4, 1.0, 1.0, 6, seed=1))
    scores = [float((j * 7 + len(r)) % 3 == 0) for j, r in enumerate(out.response_ids)]  # varied rewards
    return build_batch(out, prompts, scores, tok.pad_token_id, group_offset=0)


def test_learner_group_matches_single_process_learner(groups, tiny_files):
    """Same batch, same math: old log-probs, loss and gradient norm of 2 DP ranks equal one process's."""
    from creditrl.learner.local import LocalLearner

    cfg, tok, learner, rollout, _ = groups
    local_cfg = copy.deepcopy(cfg)
    local_cfg.resources.backend = "local"
    algorithm = Algorithm(cfg.algorithm)
    local = LocalLearner(local_cfg, algorithm, 10, tok.pad_token_id)
    batch = _batch(cfg, tok, tiny_files, rollout)
    assert len(batch) == 16
    b_local, b_dist = copy.deepcopy(batch), copy.deepcopy(batch)

    local.compute_old_stats(b_local, algorithm)
    learner.compute_old_stats(b_dist, algorithm)
    torch.testing.assert_close(b_dist.stats["old_logprobs"], b_local.stats["old_logprobs"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b_dist.stats["old_entropy"], b_local.stats["old_entropy"], rtol=0, atol=1e-5)

    for b in (b_local, b_dist):
        b.advantages, _ = algorithm.advantages(_adv(b), None)
    assert b_local.advantages.abs().sum() > 0
    m_local = local.update(b_local, algorithm)
    m_dist = learner.update(b_dist, algorithm)
    # A per-rank normalisation (num_tokens of the rank's share) would change both numbers by about 2x.
    assert m_dist["actor/grad_norm"] == pytest.approx(m_local["actor/grad_norm"], rel=1e-4)
    assert m_dist["actor/pg_loss"] == pytest.approx(m_local["actor/pg_loss"], rel=1e-4, abs=1e-7)
    # One AdamW step moves every weight by about lr * sign(grad): the weights agree up to rare sign flips of
    # near-zero gradient entries.
    dist_w = dict(learner.named_weights())
    diffs = torch.cat([(dist_w[n] - p.detach()).abs().flatten() for n, p in local.policy.named_parameters()])
    assert (diffs > 1e-5).float().mean() < 0.01


def _adv(batch):
    from creditrl.trainer.loop import _adv_inputs

    return _adv_inputs(batch)


def _scramble(rollout, learner_w: dict) -> None:
    """Give every rollout actor random weights, so a sync has something to fix."""
    import ray

    g = torch.Generator().manual_seed(7)
    noise = ray.put({n: torch.randn(t.shape, generator=g).to(t.dtype) for n, t in learner_w.items()})
    rollout.update_weights_from([noise], version=-1)
    for i in range(len(rollout.actors)):
        got = rollout.weights(i)
        assert all(not torch.equal(got[n], t) for n, t in learner_w.items() if t.numel() > 1)


def _assert_synced(learner, rollout) -> None:
    learner_w = dict(learner.named_weights())
    for i in range(len(rollout.actors)):
        got = rollout.weights(i)
        assert set(got) == set(learner_w)
        for name, t in learner_w.items():
            assert got[name].dtype == t.dtype and torch.equal(got[name], t), (i, name)


@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_sync_makes_rollout_weights_bit_identical(groups, transport):
    from creditrl.distributed.weight_sync import BroadcastSync

    cfg, tok, learner, rollout, sync = groups
    if transport == "broadcast":
        sync = BroadcastSync(learner, rollout, bucket_bytes=64 << 10, adapter_only=False, backend="gloo",
                             timeout_s=120)
    learner_w = dict(learner.named_weights())
    _scramble(rollout, learner_w)
    n_buckets = sync.push(version=3)
    assert n_buckets > 1
    _assert_synced(learner, rollout)
    assert rollout.weight_version == 3
    out = rollout.generate([[5, 6, 7]], SamplingParams(2, 1.0, 1.0, 3))
    assert out.weight_version == 3  # the version travels with the samples


def test_dead_rollout_actor_is_restarted_resynced_and_rerun(groups):
    import ray

    cfg, tok, learner, rollout, sync = groups
    sync.push(version=4)
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13], [14, 15, 16], [17, 18, 19]]
    params = SamplingParams(3, 1.0, 1.0, 5, seed=11)
    reference = rollout.generate(prompts, params)
    restarts = rollout.restarts

    def kill_first(group):  # runs while the chunks are in flight
        ray.kill(group.actors[0], no_restart=True)

    rollout.on_submitted = kill_first
    try:
        again = rollout.generate(prompts, params)
    finally:
        rollout.on_submitted = None
    assert rollout.restarts == restarts + 1
    assert len(again) == len(reference) == 15
    assert again.prompt_index == reference.prompt_index
    assert again.response_ids == reference.response_ids  # same chunk seeds, same (re-synced) weights
    assert again.weight_version == 4
    _assert_synced(learner, rollout)


def test_broadcast_sync_survives_dead_actors_mid_step_and_before_a_push(groups):
    """Broadcast transport: an actor killed during generation is re-synced through the object store and the
    group is rebuilt before the next push; an actor found dead by a push is restarted and the push retried."""
    import ray

    from creditrl.distributed.weight_sync import BroadcastSync

    cfg, tok, learner, rollout, _ = groups
    sync = BroadcastSync(learner, rollout, bucket_bytes=64 << 10, adapter_only=False, backend="gloo",
                         timeout_s=60)
    sync.push(version=5)
    assert sync.generation == 1
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13]]
    params = SamplingParams(2, 1.0, 1.0, 4, seed=3)
    reference = rollout.generate(prompts, params)
    _scramble(rollout, dict(learner.named_weights()))
    sync.push(version=5)
    restarts = rollout.restarts

    rollout.on_submitted = lambda group: ray.kill(group.actors[1], no_restart=True)
    try:
        again = rollout.generate(prompts, params)
    finally:
        rollout.on_submitted = None
    assert rollout.restarts == restarts + 1
    assert again.response_ids == reference.response_ids  # the restarted actor got the version-5 weights
    _assert_synced(learner, rollout)

    _scramble(rollout, dict(learner.named_weights()))
    sync.push(version=6)  # the group still has the dead actor's slot: rebuilt first
    assert sync.generation == 2
    _assert_synced(learner, rollout)

    ray.kill(rollout.actors[0], no_restart=True)
    sync.push(version=7)  # actor 0 fails to receive: restarted, group rebuilt, push retried
    assert rollout.restarts == restarts + 2 and sync.generation == 3
    _assert_synced(learner, rollout)
    assert rollout.generate([[5, 6]], SamplingParams(1, 1.0, 1.0, 2)).weight_version == 7
