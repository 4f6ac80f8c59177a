"""Weight sync, learner -> rollout engines: one interface, several transports.

A sync is a sequence of *buckets* (dicts name -> tensor of about `bucket_bytes`), tagged with the weight
version. The learner side produces the buckets (`iter_buckets`; under ZeRO-3 each bucket is gathered
collectively on every rank, see `DeepSpeedLearnerWorker.weight_buckets`); the transport moves them; the
rollout side applies them with `RolloutEngine.update_weights(named_tensors, version)`.

Transports (architecture.md §2.3):
    object_store  CPU / any: each bucket is `ray.put` by learner rank 0 and pulled by every rollout actor
                  (shared memory on one node, Ray's object transfer across nodes). Implemented here.
    cuda_ipc      colocated GPUs: CUDA IPC handles of a GPU bucket (`creditrl/distributed/gpu_transport.py`).
    nccl          disaggregated GPUs: broadcast from learner rank 0 (`creditrl/distributed/gpu_transport.py`).

LoRA: with `model.lora.enabled` only the adapter tensors travel (`adapter_only`); the rollout engines hold the
same frozen base weights, loaded from `model.path`. Tensors are sent in their training dtype, never force-cast
(some parameters must stay fp32; verl `BucketedWeightSender`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from torch import Tensor

WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "base_model.model.")


@dataclass
class SyncManifest:
    """What one sync carries: the version and the buckets (transport-specific handles, in order)."""

    version: int
    buckets: list = field(default_factory=list)
    num_tensors: int = 0
    num_bytes: int = 0
    adapter_only: bool = False


class WeightTransport(Protocol):
    """Moves buckets from the learner to the rollout engines."""

    name: str

    def pack(self, bucket: dict[str, Tensor]):
        """Learner side: turn one bucket into a handle that can travel to the rollout actors."""
        ...

    def unpack(self, handle) -> dict[str, Tensor]:
        """Rollout side: the bucket's tensors (owned by the caller: safe to keep after the next sync)."""
        ...


def strip_wrapper_prefixes(name: str) -> str:
    """HF name as the inference engine knows it: drop wrapper prefixes (TRL `_fix_param_name_to_vllm`)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def is_adapter_tensor(name: str) -> bool:
    """A PEFT LoRA tensor (lora_A / lora_B / lora_embedding_*)."""
    return ".lora_" in name or name.startswith("lora_")


def tensor_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def iter_buckets(named: Iterable[tuple[str, Tensor]], bucket_bytes: int) -> Iterator[dict[str, Tensor]]:
    """Group consecutive (name, tensor) pairs into dicts of at most `bucket_bytes` (a larger tensor alone)."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: dict[str, Tensor] = {}
    size = 0
    for name, t in named:
        nbytes = tensor_bytes(t)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = t
        size += nbytes
    if bucket:
        yield bucket


def plan_buckets_by_numel(numels: list[int], element_size: int, bucket_bytes: int) -> list[list[int]]:
    """Bucket parameter indices by their *full* size (ZeRO-3: `param.ds_numel`, since `numel()` of a
    partitioned parameter is 0; trl PR #6386). Every rank computes the same plan, so the collective gathers
    line up (architecture.md §2.4)."""
    out: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, n in enumerate(numels):
        nbytes = n * element_size
        if current and size + nbytes > bucket_bytes:
            out.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        out.append(current)
    return out


class ObjectStoreTransport:
    """CPU transport: each bucket goes through Ray's object store (shared memory within a node).

    `pack` must run in the process that owns the tensors (learner rank 0); the returned ObjectRef is passed
    by reference (inside a list) so each rollout actor pulls one bucket at a time.
    """

    name = "object_store"

    def pack(self, bucket: dict[str, Tensor]):
        import ray

        return ray.put({k: v.detach().cpu().contiguous() for k, v in bucket.items()})

    def unpack(self, handle) -> dict[str, Tensor]:
        import ray

        # Tensors read from the object store may be backed by read-only shared memory: clone before keeping.
        return {k: v.clone() for k, v in ray.get(handle).items()}


def make_transport(name: str) -> WeightTransport:
    if name == "object_store":
        return ObjectStoreTransport()
    if name in ("cuda_ipc", "nccl"):
        from creditrl.distributed import gpu_transport

        return gpu_transport.make(name)
    raise ValueError(f"unknown weight-sync transport '{name}' (object_store, cuda_ipc, nccl)")


class WeightSync:
    """`push(version)`: learner weights -> every rollout actor, bucket by bucket (architecture.md §2.3).

    The learner group produces the buckets (`weight_buckets`, gathered in lockstep under ZeRO-3), the rollout
    group applies them and records the version, which then travels with every `RolloutOutput`.
    """

    def __init__(self, learner, rollout, bucket_bytes: int, adapter_only: bool):
        self.learner, self.rollout = learner, rollout
        self.bucket_bytes, self.adapter_only = bucket_bytes, adapter_only

    def push(self, version: int) -> int:
        """Sync and return the number of buckets sent."""
        handles = self.learner.weight_buckets(self.bucket_bytes, self.adapter_only)
        self.rollout.update_weights_from(handles, version)
        return len(handles)
