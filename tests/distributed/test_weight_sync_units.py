"""Weight-sync building blocks (no Ray): buckets, ZeRO-3 bucket plans, names."""

import pytest
import torch

from creditrl.distributed.rollout_group import split_even
from creditrl.weights.buckets import (is_adapter_tensor, iter_buckets, plan_buckets_by_numel,
                                              strip_wrapper_prefixes)


def test_iter_buckets_respects_byte_budget_and_order():
    named = [("a", torch.zeros(4)), ("b", torch.zeros(4)), ("c", torch.zeros(10)), ("d", torch.zeros(1))]
    buckets = list(iter_buckets(named, bucket_bytes=32))  # fp32: a,b = 16 B each; c = 40 B alone; d = 4 B
    assert [list(b) for b in buckets] == [["a", "b"], ["c"], ["d"]]
    with pytest.raises(ValueError):
        list(iter_buckets(named, 0))


def test_plan_buckets_by_numel_uses_full_sizes():
    # ZeRO-3 shards report numel() == 0; the plan must use ds_numel (full sizes) and match iter_buckets
    assert plan_buckets_by_numel([4, 4, 10, 1], element_size=4, bucket_bytes=32) == [[0, 1], [2], [3]]
    assert plan_buckets_by_numel([], 4, 32) == []


def test_names():
    assert strip_wrapper_prefixes("base_model.model.model.layers.0.q_proj.weight") == "model.layers.0.q_proj.weight"
    assert strip_wrapper_prefixes("_fsdp_wrapped_module.lm_head.weight") == "lm_head.weight"
    assert is_adapter_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    assert not is_adapter_tensor("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")


def test_split_even():
    assert split_even(5, 2) == [(0, 3), (3, 5)]
    assert split_even(2, 3) == [(0, 1), (1, 2)]
    assert split_even(6, 3) == [(0, 2), (2, 4), (4, 6)]


def test_object_store_pack_copies_views_so_only_the_bucket_travels(monkeypatch):
    """A ZeRO-1/2 parameter is a view into one flat buffer; the packed bucket must not carry the buffer."""
    import pickle
    import sys
    import types

    from creditrl.weights.buckets import ObjectStoreTransport

    flat = torch.arange(100_000, dtype=torch.float32)
    bucket = {f"p{i}": flat[i * 100:(i + 1) * 100].view(10, 10) for i in range(5)}
    put = []
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(put=lambda obj: put.append(obj) or "ref"))
    assert ObjectStoreTransport().pack(bucket) == "ref"
    sent = put[0]
    assert all(torch.equal(sent[k], v) for k, v in bucket.items())
    assert len(pickle.dumps(sent)) < 20 * 1024  # 5 x 400 B of data, not 5 x 400 kB of flat buffer
    assert len(pickle.dumps(bucket)) > 5 * 400_000  # what views alone would have cost
