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

Fail fast. A collective cannot be cancelled: a member that fails (a load error, an engine that died before it
joined) leaves every peer blocked in the broadcast until the group timeout (`resources.comm_timeout_s`; 11
minutes observed). So `make_group` returns a `SyncGroup` whose waits poll the group's store for an abort key:
a member that fails sets it (`send_buckets` / `receive_into` do so on any exception), and so does the
controller when a rollout call fails (`abort_group`); every other member's wait then raises `SyncAborted`
within milliseconds. An aborted group is never reused (the controller builds a new one under a new prefix).

Pure torch: no Ray, no DeepSpeed. The Ray plumbing is in creditrl/distributed/weight_sync.py.
"""

from __future__ import annotations

import logging
import time
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


def manifest_to_wire(manifest: Manifest) -> list[list[list]]:
    """The manifest as plain lists of [name, shape, dtype name] (for channels without pickle, such as vLLM's
    msgpack `collective_rpc`, which cannot carry a `torch.dtype`)."""
    return [[[m.name, list(m.shape), str(m.dtype).removeprefix("torch.")] for m in bucket] for bucket in manifest]


def manifest_from_wire(wire: list) -> Manifest:
    """Inverse of `manifest_to_wire`."""
    def dtype(name: str) -> torch.dtype:
        d = getattr(torch, name, None)
        if not isinstance(d, torch.dtype):
            raise ValueError(f"weight sync: unknown dtype '{name}' in the manifest")
        return d

    return [tuple(TensorMeta(str(n), tuple(int(x) for x in shape), dtype(d)) for n, shape, d in bucket)
            for bucket in wire]


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


ABORT_KEY = "creditrl_abort"  # set in the group's (prefixed) store by whoever gives up on the current sync
_POLL_MAX_S = 0.02  # longest sleep between two polls of a pending wait
_ABANDONED: list[tuple[object, list]] = []  # (backend group, its pending works) of aborted groups, kept alive


class SyncAborted(RuntimeError):
    """A member of the weight-sync group (or the controller) gave up on the current sync; the message says why."""


def _poll(done: Callable[[], bool], aborted: Callable[[], str | None], what: str, timeout_s: float) -> None:
    """Wait until `done()`, raising SyncAborted as soon as `aborted()` gives a reason (or TimeoutError)."""
    deadline, delay = time.monotonic() + timeout_s, 0.0005
    while not done():
        reason = aborted()
        if reason is not None:
            raise SyncAborted(f"weight sync aborted while waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"weight sync: {what} did not happen within {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(2 * delay, _POLL_MAX_S)


class _AbortableWork:
    """A pending broadcast whose `wait()` gives up when the group is aborted (instead of at the group timeout)."""

    def __init__(self, work, group: "SyncGroup"):
        self.work, self.group = work, group

    def wait(self) -> None:
        _poll(self.work.is_completed, self.group.abort_reason, "a bucket broadcast", self.group.timeout_s)
        self.work.wait()  # completed: raises the backend's error (e.g. a peer closed its connection), if any
        if self.work in self.group.pending:
            self.group.pending.remove(self.work)


class SyncGroup:
    """A weight-sync process group and its store: `broadcast` like a ProcessGroup, plus `abort`.

    After an abort the backend group is never destroyed while a collective is pending. gloo: it is parked in
    `_ABANDONED` until its pending works end (at the group timeout), because destroying a ProcessGroupGloo with
    a pending collective blocks until then (and gloo's `abort()` does not end them). NCCL: the communicator is
    aborted at once (`ProcessGroupNCCL.abort()`), or NCCL's watchdog would tear the process down when the
    pending collective times out.
    """

    def __init__(self, backend_group, store, rank: int, world_size: int, timeout_s: float, prefix: str):
        self.backend_group, self.store = backend_group, store  # store: the group's prefixed store
        self.rank, self.world_size, self.timeout_s, self.prefix = rank, world_size, timeout_s, prefix
        self.pending: list = []  # works started and not yet waited for

    def broadcast(self, tensors: list[Tensor], opts) -> _AbortableWork:
        work = self.backend_group.broadcast(tensors, opts)
        self.pending.append(work)
        return _AbortableWork(work, self)

    def abort_reason(self) -> str | None:
        """Why the group was aborted, or None."""
        if not self.store.check([ABORT_KEY]):
            return None
        return self.store.get(ABORT_KEY).decode(errors="replace")

    def abort(self, reason: str) -> None:
        """Give up on the current sync: every member's pending or next wait raises SyncAborted."""
        if self.abort_reason() is None:
            self.store.set(ABORT_KEY, f"rank {self.rank}: {reason}")
        if self.pending:
            if type(self.backend_group).__name__ == "ProcessGroupNCCL":
                self.backend_group.abort()
            else:
                _ABANDONED.append((self.backend_group, list(self.pending)))
            self.pending.clear()
        log.warning("weight-sync group %s aborted by rank %d: %s", self.prefix, self.rank, reason)


def _reap_abandoned() -> None:
    """Let aborted backend groups go once none of their collectives is pending any more."""
    _ABANDONED[:] = [(g, works) for g, works in _ABANDONED if not all(w.is_completed() for w in works)]


def abort_group(host: str, port: int, prefix: str, reason: str, timeout_s: float = 30.0) -> None:
    """From outside the group (the controller): abort the sync of group `prefix` on the store at (host, port)."""
    import torch.distributed as dist

    store = dist.PrefixStore(prefix, make_store(host, timeout_s, port, is_host=False))
    if not store.check([ABORT_KEY]):
        store.set(ABORT_KEY, f"controller: {reason}")
    log.warning("weight-sync group %s aborted by the controller: %s", prefix, reason)


def make_group(backend: str, store, prefix: str, rank: int, world_size: int, timeout_s: float) -> SyncGroup:
    """A process group of `world_size` members, independent of the default (DeepSpeed) group.

    Every member calls this concurrently with the same `prefix` (successive groups on one store, e.g. the
    group rebuilt after a rollout actor restart, use new prefixes). Group rank 0 is the sender. The members
    first meet in the store, where an abort (a member that will never join) ends the wait at once; the backend
    group is built when all are present.
    """
    import torch.distributed as dist

    if backend not in ("gloo", "nccl"):
        raise ValueError(f"unknown broadcast backend '{backend}' (gloo on CPU, nccl on GPU)")
    _reap_abandoned()
    timeout = timedelta(seconds=timeout_s)
    pstore = dist.PrefixStore(prefix, store)
    pstore.set(f"creditrl_joined_{rank}", "1")
    joined = [f"creditrl_joined_{r}" for r in range(world_size)]

    def aborted() -> str | None:
        return pstore.get(ABORT_KEY).decode(errors="replace") if pstore.check([ABORT_KEY]) else None

    _poll(lambda: pstore.check(joined), aborted, f"all {world_size} members to join group {prefix}", timeout_s)
    if backend == "gloo":
        group = dist.ProcessGroupGloo(pstore, rank, world_size, timeout)
    else:
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        group = dist.ProcessGroupNCCL(pstore, rank, world_size, opts)
    log.info("weight-sync group %s: rank %d of %d (%s)", prefix, rank, world_size, backend)
    return SyncGroup(group, pstore, rank, world_size, timeout_s, prefix)


def _abort_on_error(group, exc: BaseException) -> None:
    """A member failed mid-sync: tell the others (groups without `abort`, e.g. test doubles, have no peers)."""
    abort = getattr(group, "abort", None)
    if abort is not None:
        abort(str(exc) if isinstance(exc, SyncAborted) else f"{type(exc).__name__}: {exc}")


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
    try:
        for meta, bucket in zip(manifest, buckets, strict=True):  # ValueError if the counts differ
            buffer = pack(bucket, meta, device)
            if pending is not None:
                pending[0].wait()
            pending = (_bcast(group, buffer), buffer)
            sent += buffer.numel()
        if pending is not None:
            pending[0].wait()
    except BaseException as exc:
        _abort_on_error(group, exc)
        raise
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
    """Receive a whole sync and hand each bucket to `load`; returns the number of bytes received. Any failure
    (of the transfer or of `load`) aborts the group, so the sender and the other receivers stop at once."""
    received = 0
    try:
        for bucket in receive_buckets(group, manifest, device):
            load(bucket)
            received += sum(t.numel() * t.element_size() for t in bucket.values())
    except BaseException as exc:
        _abort_on_error(group, exc)
        raise
    return received
