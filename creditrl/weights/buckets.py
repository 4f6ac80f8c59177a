"""Weight buckets and transports, pure torch (+ Ray's object store, imported lazily).

Used by both sides of a weight sync (learner ranks and rollout engines): HF names as an inference engine knows
them (`strip_wrapper_prefixes`), LoRA adapter tensors (`is_adapter_tensor`), grouping tensors into buckets of
about `bucket_bytes` (`iter_buckets`, `plan_buckets_by_numel`), and the object-store transport. The sync
drivers (which buckets go where, when) are in `creditrl/distributed/weight_sync.py`.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

from torch import Tensor


WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "base_model.model.")


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

        # Copies, always: under ZeRO-1/2 a parameter is a view into DeepSpeed's flat buffer, and serialising a
        # view serialises its whole storage (each tensor would carry the whole model: 38x here, measured).
        return ray.put({k: v.detach().to("cpu", copy=True) for k, v in bucket.items()})

    def unpack(self, handle) -> dict[str, Tensor]:
        import ray

        # Tensors read from the object store may be backed by read-only shared memory: clone before keeping.
        return {k: v.clone() for k, v in ray.get(handle).items()}


# ---- tensors as bytes: for channels that cannot carry torch objects (vLLM's msgpack `collective_rpc`) -------
def tensors_to_bytes(tensors: dict[str, Tensor]) -> bytes:
    """A safetensors payload of `tensors` (any dtype, bit-exact; moved to the CPU). Tensors that are views into a
    larger storage (e.g. DeepSpeed's flat buffer) are copied first: safetensors refuses shared storage."""
    from safetensors.torch import save

    def own(t: Tensor) -> Tensor:
        t = t.detach().to("cpu").contiguous()
        return t if t.untyped_storage().nbytes() == tensor_bytes(t) else t.clone()

    return save({name: own(t) for name, t in tensors.items()})


def tensors_from_bytes(payload: bytes) -> dict[str, Tensor]:
    """Inverse of `tensors_to_bytes` (fresh CPU tensors)."""
    from safetensors.torch import load

    return load(payload)


# ---- PEFT LoRA names -----------------------------------------------------------------------------------------
PEFT_PREFIX = "base_model.model."


def peft_name(name: str, target_modules: list[str]) -> str:
    """The name of HF parameter `name` (e.g. model.layers.0.self_attn.q_proj.weight) inside a PEFT LoRA model
    that wraps the modules `target_modules`: base_model.model. prefix, and `.base_layer` under wrapped modules."""
    module, _, leaf = name.rpartition(".")
    if module.rpartition(".")[2] in target_modules:
        return f"{PEFT_PREFIX}{module}.base_layer.{leaf}"
    return PEFT_PREFIX + name


def adapter_file_name(name: str) -> str:
    """A PEFT adapter tensor as PEFT saves it (adapter_model.safetensors): without the adapter name
    (`.lora_A.default.weight` -> `.lora_A.weight`), with the base_model.model. prefix."""
    name = name.replace(".default.", ".")
    return name if name.startswith(PEFT_PREFIX) else PEFT_PREFIX + name


def adapter_model_name(file_name: str, adapter: str = "default") -> str:
    """Inverse of `adapter_file_name`: the tensor's name in the live PEFT model (adapter `adapter`)."""
    for kind in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
        file_name = file_name.replace(f".{kind}.", f".{kind}.{adapter}.")
    return file_name


def chain_buckets(buckets: Iterable[dict[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    """Buckets as one stream of (name, tensor), pulling one bucket at a time (for `update_weights`)."""
    for bucket in buckets:
        yield from bucket.items()
