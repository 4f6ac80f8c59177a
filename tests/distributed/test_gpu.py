"""GPU-only checks (skipped without CUDA): the CUDA IPC transport round trip and the vLLM engine contract."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_cuda_ipc_transport_round_trip_is_bit_exact():
    from creditrl.weights.cuda_ipc import CudaIpcTransport

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
    from creditrl.models.build import load_causal_lm

    cfg = load_config("tiny_grpo_ray", tiny_files.overrides(None, "resources.use_gpu=true", "rollout.engine=vllm"))
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


def _ipc_child(handle, queue):

    from creditrl.weights.cuda_ipc import CudaIpcTransport

    got = CudaIpcTransport().unpack(handle)
    queue.put({k: v.cpu() for k, v in got.items()})


def test_cuda_ipc_handle_opens_in_another_process():
    """The colocated path proper: the bucket is rebuilt from its IPC handle in a second process."""
    import torch.multiprocessing as mp

    from creditrl.weights.cuda_ipc import CudaIpcTransport

    bucket = {"w": torch.randn(64, 33, device="cuda"), "b": torch.randn(5, device="cuda").to(torch.bfloat16)}
    sender = CudaIpcTransport()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_ipc_child, args=(sender.pack(bucket), queue))
    proc.start()
    got = queue.get(timeout=120)
    proc.join(timeout=60)
    sender.release()
    for k, v in bucket.items():
        assert torch.equal(got[k], v.cpu())


def _nccl_member(rank, port, manifest, buckets, queue):
    import torch

    from creditrl.weights.broadcast import make_group, make_store, receive_into, send_buckets

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    store = make_store("127.0.0.1", 60, port=port, is_host=False)
    group = make_group("nccl", store, "gpu-test", rank, 2, 60)
    if rank == 0:
        queue.put((0, send_buckets(group, iter([{n: t.to(device) for n, t in b.items()} for b in buckets]),
                                   manifest, device)))
    else:
        got = {}
        receive_into(group, manifest, device, lambda b: got.update({n: t.cpu() for n, t in b.items()}))
        queue.put((1, got))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="NCCL broadcast needs two GPUs (NCCL rejects two ranks on one device)")
def test_nccl_broadcast_group_delivers_buckets_bit_exactly():
    import torch.multiprocessing as mp

    from creditrl.weights.broadcast import TensorMeta, make_store

    buckets = [{"a": torch.randn(256, 64), "b": torch.randn(9).to(torch.bfloat16)}, {"c": torch.arange(5)}]
    manifest = [tuple(TensorMeta(n, tuple(t.shape), t.dtype) for n, t in b.items()) for b in buckets]
    host = make_store("127.0.0.1", 60)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_nccl_member, args=(r, host.port, manifest, buckets, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=180) for _ in range(2))
    for p in procs:
        p.join(timeout=60)
    for b in buckets:
        for n, t in b.items():
            assert torch.equal(results[1][n], t), n


@pytest.mark.parametrize("placement, weight_sync", [("colocated", "cuda_ipc"), ("disaggregated", "broadcast")])
def test_gpu_ray_run_with_vllm(local_ray, tiny_files, tmp_path, placement, weight_sync):
    """Two GRPO steps with vLLM rollout actors and DeepSpeed learners on GPU: colocated with CUDA IPC sync
    and sleep/wake, or disaggregated with the NCCL broadcast (needs 2 GPUs)."""
    pytest.importorskip("vllm")
    gpus = torch.cuda.device_count()
    if placement == "disaggregated" and gpus < 2:
        pytest.skip("disaggregated placement needs 2 GPUs (one learner, one rollout engine)")
    from creditrl.config import load_config
    from creditrl.trainer.loop import train

    cfg = load_config("tiny_grpo_ray", tiny_files.overrides(
        tmp_path / placement, "train.steps=2", "train.global_batch_prompts=8", "rollout.n_samples=4",
        "eval.max_prompts=16", "eval.pass_k=0", "resources.use_gpu=true", "rollout.engine=vllm",
        "resources.learner_ranks=1",
        "resources.rollout_actors=1", f"resources.placement={placement}", f"resources.weight_sync={weight_sync}"))
    result = train(cfg)
    rows = [r for r in result.history if "train/samples" in r]
    assert [r["perf/weight_version"] for r in rows] == [0.0, 1.0]  # each step sampled from the last sync
    assert all(r["train/samples"] == 32 for r in rows)
