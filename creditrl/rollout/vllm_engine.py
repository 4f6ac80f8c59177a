"""The vLLM rollout engine (GPU). Every vLLM call in creditrl is in this module (architecture.md §2.6).

Tested range: vllm>=0.28,<0.34 (the [gpu] extra pins it with the matching torch; install.md §4). The APIs
used, each documented for that range:

    vllm.LLM(model, seed, dtype, enable_sleep_mode, enable_prefix_caching, logprobs_mode, enable_lora,
             max_lora_rank, gpu_memory_utilization, worker_extension_cls)
    LLM.generate(list[TokensPrompt], SamplingParams, lora_request=..., use_tqdm=False)
    LLM.collective_rpc(method, args=...)   -> WeightLoaderExtension methods on every worker (load_weights,
                                           load_weights_ipc, join_sync_group, receive_weights)
    LLM.sleep(level) / LLM.wake_up(tags)   sleep mode (level 1 with adapter-only LoRA sync, else 2)
    LLM.reset_prefix_cache()               after every weight sync
    vllm.lora.request.LoRARequest(name, int_id, path)  adapter-only LoRA sync (versioned names, as TRL)

Weights: full syncs go to every worker through `collective_rpc("load_weights", ...)` (named tensors, or CUDA
IPC handles when colocated) and the model's own `load_weights`, which fuses qkv / gate_up itself; names have
wrapper prefixes stripped. Log-probs are `processed_logprobs` (after temperature / top-p), the same
distribution the HF engine reports. vLLM is imported only when the engine is built: importing this module
without vLLM is fine.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable

from torch import Tensor

from creditrl.config.schema import RecipeConfig
from creditrl.rollout.base import RolloutOutput, SamplingParams

log = logging.getLogger(__name__)

VLLM_VERSION_RANGE = (">=0.28", "<0.34")


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class WeightLoaderExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`): receive weights from the learner."""

    def load_weights(self, named: list[tuple[str, Tensor]]) -> None:
        self.model_runner.model.load_weights(weights=named)

    def load_weights_ipc(self, handles: dict) -> None:
        """CUDA IPC handles (creditrl.weights.cuda_ipc.CudaIpcTransport.pack) -> load_weights."""
        from creditrl.weights.cuda_ipc import CudaIpcTransport

        from creditrl.weights.buckets import strip_wrapper_prefixes

        bucket = CudaIpcTransport().unpack(handles)
        self.model_runner.model.load_weights(weights=[(strip_wrapper_prefixes(n), t) for n, t in bucket.items()])


    # ---- broadcast sync: this worker is rank `rank` of the group (creditrl/weights/broadcast.py) ------
    def join_sync_group(self, backend: str, host: str, port: int, prefix: str, rank: int, world_size: int,
                        timeout_s: float) -> None:
        from creditrl.weights.broadcast import make_group, make_store

        self._creditrl_sync = None
        store = make_store(host, timeout_s, port, is_host=False)
        self._creditrl_sync = (store, make_group(backend, store, prefix, rank, world_size, timeout_s))

    def receive_weights(self, manifest: list, load: bool = True):
        """Receive one sync on this worker's GPU. load=True: into the model bucket by bucket (returns None);
        load=False: return the tensors on the CPU (LoRA adapters, loaded by the engine as a LoRARequest)."""
        import torch

        from creditrl.weights.broadcast import receive_buckets
        from creditrl.weights.buckets import strip_wrapper_prefixes

        group = self._creditrl_sync[1]
        device = torch.device("cuda", torch.cuda.current_device())
        kept = {}
        for bucket in receive_buckets(group, manifest, device):
            if load:
                self.model_runner.model.load_weights(weights=[(strip_wrapper_prefixes(n), t)
                                                              for n, t in bucket.items()])
            else:
                kept.update({n: t.cpu() for n, t in bucket.items()})
        return None if load else kept


def to_sampling_params(params: SamplingParams):
    from vllm import SamplingParams as VLLMSamplingParams

    return VLLMSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                              max_tokens=params.max_new_tokens, logprobs=0, seed=params.seed)


def to_rollout_output(request_outputs, prompt_ids: list[list[int]], version: int) -> RolloutOutput:
    """vLLM RequestOutputs (one per prompt, `n` completions each) -> RolloutOutput in creditrl's row order."""
    out = RolloutOutput([], [], [], [], [], weight_version=version)
    for p, req in enumerate(request_outputs):
        for comp in req.outputs:
            toks = list(comp.token_ids)
            lps = [float(step[t].logprob) for t, step in zip(toks, comp.logprobs or [])]
            out.prompt_ids.append(list(prompt_ids[p]))
            out.response_ids.append(toks)
            out.logprobs.append(lps)
            out.finished.append(comp.finish_reason == "stop")
            out.prompt_index.append(p)
    return out


class VLLMEngine:
    """`RolloutEngine` on vLLM's offline `LLM` inside a Ray actor (one GPU, or a fraction when colocated)."""

    def __init__(self, cfg: RecipeConfig, seed: int):
        from vllm import LLM

        self.cfg = cfg
        self.lora = cfg.model.lora.enabled
        self.weight_version = 0
        self._lora_request = None
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="creditrl-lora-"))
        rc = cfg.resources
        self.llm = LLM(model=cfg.model.path, seed=seed, dtype="bfloat16" if rc.bf16 else cfg.model.dtype,
                       enable_sleep_mode=rc.placement == "colocated", enable_prefix_caching=True,
                       logprobs_mode="processed_logprobs", enable_lora=self.lora,
                       max_lora_rank=cfg.model.lora.r if self.lora else 16,
                       gpu_memory_utilization=rc.rollout_gpu_fraction if rc.placement == "colocated" else 0.85,
                       worker_extension_cls="creditrl.rollout.vllm_engine.WeightLoaderExtension")

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutOutput:
        from vllm.inputs import TokensPrompt

        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids],
                                 to_sampling_params(params), lora_request=self._lora_request, use_tqdm=False)
        return to_rollout_output(outs, prompt_ids, self.weight_version)

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        from creditrl.weights.buckets import strip_wrapper_prefixes

        named = [(strip_wrapper_prefixes(n), t) for n, t in named_tensors]
        if self.lora:
            self._load_adapter(dict(named), version)
        else:
            self.llm.collective_rpc("load_weights", args=(named,))
        self.llm.reset_prefix_cache()
        self.weight_version = version

    def update_weights_ipc(self, handles: dict, version: int) -> None:
        self.llm.collective_rpc("load_weights_ipc", args=(handles,))
        self.llm.reset_prefix_cache()
        self.weight_version = version

    def join_sync_group(self, backend: str, host: str, port: int, prefix: str, rank: int, world_size: int,
                        timeout_s: float) -> None:
        """Broadcast sync: the engine's (single, tensor_parallel_size=1) worker joins as rank `rank`."""
        self.llm.collective_rpc("join_sync_group", args=(backend, host, port, prefix, rank, world_size, timeout_s))

    def receive_weights(self, manifest: list, version: int) -> None:
        """Broadcast sync into the worker: full weights are loaded there; LoRA adapters come back to this
        process and are registered as a new versioned LoRARequest."""
        if self.lora:
            tensors = self.llm.collective_rpc("receive_weights", args=(manifest, False))[0]
            from creditrl.weights.buckets import strip_wrapper_prefixes

            self._load_adapter({strip_wrapper_prefixes(n): t for n, t in tensors.items()}, version)
        else:
            self.llm.collective_rpc("receive_weights", args=(manifest, True))
        self.llm.reset_prefix_cache()
        self.weight_version = version

    def _load_adapter(self, tensors: dict[str, Tensor], version: int) -> None:
        """Adapter-only sync: write the adapter (PEFT layout) and switch to a new versioned LoRARequest."""
        import json

        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        lc = self.cfg.model.lora
        d = self._adapter_dir / f"v{version}"
        d.mkdir(parents=True, exist_ok=True)
        save_file({f"base_model.model.{k}".replace(".default.", "."): v.contiguous() for k, v in tensors.items()},
                  str(d / "adapter_model.safetensors"))
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lc.r, "lora_alpha": lc.alpha,
            "lora_dropout": lc.dropout, "target_modules": lc.target_modules, "bias": "none"}))
        self._lora_request = LoRARequest(f"creditrl-policy-v{version}", version + 1, str(d))

    def sleep(self, level: int | None = None) -> None:
        """Free GPU memory between generations: level 1 keeps the weights in CPU memory (needed with
        adapter-only LoRA sync, whose base weights are never re-sent), level 2 discards them."""
        self.llm.sleep(level=level or (1 if self.lora else 2))

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Wake in stages (weights, then kv_cache after the sync) to avoid the double-resident OOM (vllm#15254)."""
        self.llm.wake_up(tags=tags)

    @property
    def model(self):
        raise NotImplementedError("vLLM keeps its weights inside its workers; read them with vLLM's weight "
                                  "checker (architecture.md §2.3), not through `model`")
