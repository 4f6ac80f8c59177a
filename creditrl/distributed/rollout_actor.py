"""A rollout engine that lives in a Ray actor and owns its model copy.

`RolloutActor` is the actor body used by `creditrl/distributed/rollout_group.py`. Its engine is the recipe's
`rollout.engine` (creditrl/rollout/factory.py), on CPU and on GPU alike: `hf` wraps `HFGenerateEngine` around
its own copy of the policy (loaded from `model.path`, with the same LoRA adapter structure when LoRA is on);
`vllm` is a `VLLMEngine` (creditrl/rollout/vllm_engine.py), whose weights live in its own worker process.

Weights arrive through the transports of creditrl/distributed/weight_sync.py:

    object store   `update_weights(handles, version)`: the buckets stream into ONE engine update (pulled
                   one at a time), so a fused vLLM layer split across buckets is complete at the end
    broadcast      `join_sync_group` + `receive_weights`: the HF engine receives here; vLLM in its worker
    CUDA IPC       `load_ipc_bucket`: colocated GPU, vLLM engines only
"""

from __future__ import annotations

import logging
import os
import socket

import torch

from creditrl.config.schema import RecipeConfig
from creditrl.rollout.base import RolloutOutput, SamplingParams
from creditrl.rollout.factory import make_rollout_engine
from creditrl.weights.buckets import ObjectStoreTransport, chain_buckets

log = logging.getLogger(__name__)


class RolloutActor:
    """Ray actor body: generate on request, receive weight buckets, report where it runs."""

    def __init__(self, cfg: RecipeConfig, actor_index: int, pad_id: int, eos_id: int):
        self.index, self.engine_name = actor_index, cfg.rollout.engine
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        torch.manual_seed(cfg.seed + 7919 * (actor_index + 1))  # the HF engine's stream for unseeded calls
        self.engine = make_rollout_engine(cfg, pad_id, eos_id, seed=cfg.seed + actor_index)
        self.transport = ObjectStoreTransport()
        self._sync_store = self._sync_group = None  # broadcast group membership (HF engine; vLLM: its worker)

    def info(self) -> dict:
        import ray

        return {"rank": self.index, "host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "engine": self.engine_name}

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutOutput:
        return self.engine.generate(prompt_ids, params)

    def update_weights(self, handles: list, version: int) -> int:
        """Apply one object-store sync (bucket refs, in order) as one engine update; returns the new version."""
        self.engine.update_weights(chain_buckets(self.transport.unpack(h) for h in handles), version)
        self.engine.weight_version = version
        return version

    # ---- broadcast sync (creditrl/weights/broadcast.py): HF engine here, vLLM inside its worker ------
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

    def load_ipc_bucket(self, handle, index: int, count: int, version: int) -> None:
        """Colocated GPU: bucket `index` of `count` of one sync, by CUDA IPC handle (vLLM engines only)."""
        if not hasattr(self.engine, "load_weights_ipc"):
            raise RuntimeError("CUDA IPC weight sync needs vLLM rollout engines on GPU (rollout.engine=vllm, "
                               "resources.use_gpu=true); use resources.weight_sync=broadcast or object_store")
        self.engine.load_weights_ipc(handle, index, count, version)

    def weights(self) -> dict[str, torch.Tensor]:
        """A copy of the weights the engine generates with, by the learner's names (tests: bit-exact sync).
        vLLM: read back from its worker."""
        if hasattr(self.engine, "weights"):
            return self.engine.weights()
        return {n: p.detach().cpu().clone() for n, p in self.engine.model.named_parameters()}

    def weight_version(self) -> int:
        return self.engine.weight_version

    def sleep(self) -> None:
        """Colocated GPU: free the engine's memory between generations (vLLM on GPU; a no-op otherwise)."""
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    def wake_up(self, tags: list[str] | None = None) -> None:
        if hasattr(self.engine, "wake_up"):
            self.engine.wake_up(tags)

    def shutdown(self) -> None:
        """Stop the engine (vLLM: its engine processes) before the actor is killed."""
        self.engine.shutdown()
