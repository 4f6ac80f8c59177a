"""LoRA: the sync sends the adapter tensors only, and the rollout actor's weights (frozen base + adapters)
end bit-identical to the learner's. Slow: it starts a DeepSpeed rank and a rollout actor."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.test_groups import _cfg

# Runs by default (~25 s per transport).


@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_lora_sync_sends_adapters_only_and_is_bit_identical(local_ray, tiny_files, transport):
    from creditrl.distributed.learner_group import LearnerGroup
    from creditrl.distributed.placement import make_placement
    from creditrl.distributed.rollout_group import RolloutGroup
    from creditrl.distributed.weight_sync import BroadcastSync, WeightSync, is_adapter_tensor
    from creditrl.models.build import load_tokenizer

    cfg = _cfg(tiny_files, "model.lora.enabled=true", "resources.learner_ranks=1", "resources.rollout_actors=1")
    tok = load_tokenizer(str(tiny_files.model))
    placement = make_placement(cfg.resources, 120)
    learner = LearnerGroup(cfg, 10, tok.pad_token_id, placement.learner)
    rollout = RolloutGroup(cfg, placement.rollout, tok.pad_token_id, tok.eos_token_id)
    try:
        adapters = learner.adapter_weights()
        assert adapters and all(is_adapter_tensor(n) for n in adapters)
        before = rollout.weights(0)
        assert any(not torch.equal(before[n], t) for n, t in adapters.items())  # independent LoRA-A inits
        if transport == "broadcast":
            sync = BroadcastSync(learner, rollout, 1 << 20, adapter_only=True, backend="gloo", timeout_s=60)
            assert all(is_adapter_tensor(m.name) for bucket in sync.manifest for m in bucket)
        else:
            sync = WeightSync(learner, rollout, 1 << 20, adapter_only=True)
        sync.push(version=1)
        got = rollout.weights(0)
        full = dict(learner.named_weights())
        assert set(got) == set(full)
        for name, t in full.items():
            assert torch.equal(got[name], t), name  # adapters synced; frozen base loaded from the same files
    finally:
        rollout.shutdown()
        learner.shutdown()
        placement.remove()
