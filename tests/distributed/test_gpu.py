"""GPU-only checks (skipped without CUDA): the CUDA IPC transport round trip and the vLLM engine contract."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_cuda_ipc_transport_round_trip_is_bit_exact():
    from creditrl.distributed.gpu_transport import CudaIpcTransport

    bucket = {"a": torch.randn(3, 5, device="cuda"), "b": torch.arange(7, device="cuda", dtype=torch.bfloat16)}
    sender, receiver = CudaIpcTransport(), CudaIpcTransport()
    got = receiver.unpack(sender.pack(bucket))
    for k, v in bucket.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v)
    bucket["a"].zero_()
    assert not torch.equal(got["a"], bucket["a"])  # the receiver cloned out of the shared buffer


def test_vllm_engine_generates_and_loads_weights(tiny_files):
    pytest.importorskip("vllm")
    from creditrl.config import load_config
    from creditrl.rollout.base import SamplingParams
    from creditrl.rollout.vllm_engine import VLLMEngine
    from creditrl.trainer.learner import load_causal_lm

    cfg = load_config("tiny_grpo_ray", tiny_files.overrides(None, "resources.use_gpu=true"))
    engine = VLLMEngine(cfg, seed=0)
    out = engine.generate([[5, 6, 7], [8, 9]], SamplingParams(3, 1.0, 1.0, 4))
    assert len(out) == 6 and out.prompt_index == [0, 0, 0, 1, 1, 1]
    assert all(len(lp) == len(r) for lp, r in zip(out.logprobs, out.response_ids))
    model = load_causal_lm(str(tiny_files.model))
    engine.update_weights(model.named_parameters(), version=5)
    assert engine.generate([[5, 6]], SamplingParams(1, 0.0, 1.0, 2)).weight_version == 5
    engine.sleep()
    engine.wake_up(["weights"])
    engine.wake_up(["kv_cache"])
