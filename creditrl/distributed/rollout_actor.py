"""A rollout engine that lives in a Ray actor and owns its model copy.

`RolloutActor` is the actor body used by `creditrl/distributed/rollout_group.py`: on CPU it wraps
`HFGenerateEngine` around its own copy of the policy (loaded from `model.path`, with the same LoRA adapter
structure when LoRA is on); on GPU it wraps `VLLMEngine` (creditrl/rollout/vllm_engine.py). Weights arrive as
buckets through a weight-sync transport and are applied with the engine's `update_weights(named, version)`.
"""

from __future__ import annotations

import logging
import os
import socket

import torch

from creditrl.config.schema import RecipeConfig
from creditrl.models.build import build_policy
from creditrl.rollout.base import RolloutOutput, SamplingParams

log = logging.getLogger(__name__)


class RolloutActor:
    """Ray actor body: generate on request, receive weight buckets, report where it runs."""

    def __init__(self, cfg: RecipeConfig, actor_index: int, pad_id: int, eos_id: int):
        from creditrl.weights.buckets import ObjectStoreTransport

        self.index = actor_index
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        torch.manual_seed(cfg.seed + 7919 * (actor_index + 1))
        if cfg.resources.use_gpu:
            from creditrl.rollout.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(cfg, seed=cfg.seed + actor_index)
        else:
            from creditrl.rollout.hf_engine import HFGenerateEngine

            self.engine = HFGenerateEngine(build_policy(cfg.model, trainable=False), pad_id, eos_id,
                                           cfg.rollout.generation_batch_prompts, cfg.model.autocast_bf16)
        self.transport = ObjectStoreTransport()  # update_weights; broadcast / IPC syncs have their own methods
        self._sync_store = self._sync_group = None  # broadcast group membership (HF engine on CPU)

    def info(self) -> dict:
        import ray

        return {"rank": self.index, "host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                "pid": os.getpid()}

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutOutput:
        return self.engine.generate(prompt_ids, params)

    def update_weights(self, handles: list, version: int) -> int:
        """Apply the buckets in order (one in memory at a time); returns the new version."""
        for handle in handles:
            bucket = self.transport.unpack(handle)
            self.engine.update_weights(bucket.items(), version)
        self.engine.weight_version = version
        return version

    # ---- broadcast sync (creditrl/weights/broadcast.py): HF engine here, vLLM inside its workers ------
    def join_sync_group(self, backend: str, host: str, port: int, prefix: str, rank: int, world_size: int,
                        timeout_s: float) -> None:
        if hasattr(self.engine, "join_sync_group"):
            return self.engine.join_sync_group(backend, host, port, prefix, rank, world_size, timeout_s)
        from creditrl.weights.broadcast import make_group, make_store

        self._sync_group = None  # drop the previous generation's group first
        self._sync_store = make_store(host, timeout_s, port, is_host=False)
        self._sync_group = make_group(backend, self._sync_store, prefix, rank, world_size, timeout_s)

    def receive_weights(self, manifest: list, version: int) -> int:
        """Receive one broadcast sync and load it bucket by bucket; returns the new version."""
        if hasattr(self.engine, "receive_weights"):
            self.engine.receive_weights(manifest, version)
            return version
        from creditrl.weights.broadcast import receive_into

        if self._sync_group is None:
            raise RuntimeError(f"rollout actor {self.index} is not in a weight-sync group (join_sync_group first)")
        receive_into(self._sync_group, manifest, torch.device("cpu"),
                     lambda bucket: self.engine.update_weights(bucket.items(), version))
        self.engine.weight_version = version
        return version

    def load_ipc_bucket(self, handle, version: int) -> None:
        """Colocated GPU: load one CUDA IPC bucket (vLLM engines only)."""
        if not hasattr(self.engine, "update_weights_ipc"):
            raise RuntimeError("CUDA IPC weight sync needs GPU rollout engines (resources.use_gpu=true); "
                               "use resources.weight_sync=broadcast or object_store on CPU")
        self.engine.update_weights_ipc(handle, version)

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the engine's current parameters by name (tests: bit-exact sync)."""
        return {n: p.detach().cpu().clone() for n, p in self.engine.model.named_parameters()}

    def weight_version(self) -> int:
        return self.engine.weight_version

    def sleep(self) -> None:
        """Colocated GPU mode: free the engine's memory between generations (no-op on CPU)."""
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    def wake_up(self, tags: list[str] | None = None) -> None:
        if hasattr(self.engine, "wake_up"):
            self.engine.wake_up(tags)
