"""Broadcast weight sync: learner rank 0 -> every rollout engine over one dedicated process group.

The group has `1 + N` members: rank 0 is learner rank 0, ranks 1..N are the rollout engines (one vLLM worker
or one HF-generate actor each). It is built directly on a `TCPStore` (`ProcessGroupGloo` on CPU,
`ProcessGroupNCCL` on GPU) and never touches the default process group, which belongs to the learners'
DeepSpeed group; this is what verl / OpenRLHF do with vLLM's `StatelessProcessGroup` + `PyNcclCommunicator`
(architecture.md §2.3), without depending on vLLM.

A sync is a fixed sequence of buckets described by a manifest (names, shapes, dtypes; the same on every
member, computed once from the learner's parameters). Each bucket travels as ONE flat uint8 buffer: the sender
packs it, every receiver unpacks it into fresh tensors. Both sides keep one broadcast in flight while they
prepare the next bucket: the sender gathers (ZeRO-3) and packs bucket k+1 while bucket k is on the wire; a
receiver posts the receive of bucket k+1 before it loads bucket k into its engine.

Pure torch: no Ray, no DeepSpeed. The Ray plumbing is in creditrl/distributed/weight_sync.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


BucketMeta = tuple[TensorMeta, ...]  # one bucket: its tensors in order
Manifest = list[BucketMeta]  # one sync: its buckets in order


def bucket_nbytes(bucket: BucketMeta) -> int:
    return sum(m.nbytes for m in bucket)


def pack(bucket: dict[str, Tensor], meta: BucketMeta, device: torch.device) -> Tensor:
    """Concatenate the bucket's tensors (in manifest order) as raw bytes into one flat uint8 buffer."""
    parts = []
    for m in meta:
        t = bucket[m.name]
        if tuple(t.shape) != m.shape or t.dtype != m.dtype:
            raise ValueError(f"weight sync: '{m.name}' is {tuple(t.shape)} {t.dtype} but the manifest says "
                             f"{m.shape} {m.dtype} (did the parameters change after the group was built?)")
        parts.append(t.detach().to(device).contiguous().view(-1).view(torch.uint8))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8, device=device)


def unpack(buffer: Tensor, meta: BucketMeta) -> dict[str, Tensor]:
    """Inverse of `pack`: fresh tensors (clones, so the buffer can be dropped or reused)."""
    out, offset = {}, 0
    for m in meta:
        n = m.nbytes
        # clone the bytes first: a fresh storage is aligned for any dtype (an offset into the buffer may not be)
        out[m.name] = buffer[offset: offset + n].clone().view(m.dtype).view(m.shape)
        offset += n
    if offset != buffer.numel():
        raise ValueError(f"weight sync: received {buffer.numel()} bytes, the manifest describes {offset}")
    return out


def make_store(host: str, timeout_s: float, port: int = 0, is_host: bool = True):
    """The rendezvous store of a sync group. The host side (learner rank 0) binds a free port when `port` is 0
    (read it back from `store.port`); members connect to (host, port)."""
    import torch.distributed as dist

    return dist.TCPStore(host, port, None, is_host, timedelta(seconds=timeout_s), wait_for_workers=False)


def make_group(backend: str, store, prefix: str, rank: int, world_size: int, timeout_s: float):
    """A process group of `world_size` members, independent of the default (DeepSpeed) group.

    Every member calls this concurrently with the same `prefix` (successive groups on one store, e.g. the
    group rebuilt after a rollout actor restart, use new prefixes). Group rank 0 is the sender.
    """
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    pstore = dist.PrefixStore(prefix, store)
    if backend == "gloo":
        group = dist.ProcessGroupGloo(pstore, rank, world_size, timeout)
    elif backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        group = dist.ProcessGroupNCCL(pstore, rank, world_size, opts)
    else:
        raise ValueError(f"unknown broadcast backend '{backend}' (gloo on CPU, nccl on GPU)")
    log.info("weight-sync group %s: rank %d of %d (%s)", prefix, rank, world_size, backend)
    return group


def _bcast(group, buffer: Tensor):
    """Start a broadcast from group rank 0; returns the work handle (wait() to complete)."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    return group.broadcast([buffer], opts)


def send_buckets(group, buckets: Iterable[dict[str, Tensor]], manifest: Manifest, device: torch.device) -> int:
    """Sender (group rank 0): broadcast every bucket; packs bucket k+1 while bucket k is in flight.

    `buckets` is consumed lazily, so a ZeRO-3 learner can gather bucket k+1 (a collective of the learner group)
    while bucket k is being broadcast on this group. Returns the number of bytes sent.
    """
    pending: tuple[object, Tensor] | None = None  # (work, buffer): the buffer must outlive its broadcast
    sent = 0
    for meta, bucket in zip(manifest, buckets, strict=True):  # ValueError if the counts differ
        buffer = pack(bucket, meta, device)
        if pending is not None:
            pending[0].wait()
        pending = (_bcast(group, buffer), buffer)
        sent += buffer.numel()
    if pending is not None:
        pending[0].wait()
    return sent


def receive_buckets(group, manifest: Manifest, device: torch.device) -> Iterator[dict[str, Tensor]]:
    """Receiver: yield each bucket's tensors in order; the receive of bucket k+1 is posted before bucket k is
    yielded (so the caller loads k while k+1 arrives)."""
    def post(meta: BucketMeta):
        buffer = torch.empty(bucket_nbytes(meta), dtype=torch.uint8, device=device)
        return _bcast(group, buffer), buffer

    if not manifest:
        return
    current = post(manifest[0])
    for k, meta in enumerate(manifest):
        current[0].wait()
        nxt = post(manifest[k + 1]) if k + 1 < len(manifest) else None
        yield unpack(current[1], meta)
        current = nxt


def receive_into(group, manifest: Manifest, device: torch.device,
                 load: Callable[[dict[str, Tensor]], None]) -> int:
    """Receive a whole sync and hand each bucket to `load`; returns the number of bytes received."""
    received = 0
    for bucket in receive_buckets(group, manifest, device):
        load(bucket)
        received += sum(t.numel() * t.element_size() for t in bucket.values())
    return received
