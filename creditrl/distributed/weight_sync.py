"""Weight sync, learner -> rollout engines: one interface, several transports.

A sync is a sequence of *buckets* (dicts name -> tensor of about `bucket_bytes`), tagged with the weight
version. The learner side produces the buckets (`iter_buckets`; under ZeRO-3 each bucket is gathered
collectively on every rank, see `DeepSpeedLearnerWorker.weight_buckets`); the transport moves them; the
rollout side applies them with `RolloutEngine.update_weights(named_tensors, version)`.

Transports (architecture.md §2.3), chosen by `resources.weight_sync` (`auto` picks the last column):

    object_store  each bucket is `ray.put` by learner rank 0 and pulled    any placement, LoRA adapters
                  by every rollout actor (shared memory within a node)
    broadcast     learner rank 0 broadcasts flat buckets to all engines    CPU (gloo), disaggregated GPU (NCCL)
                  over a dedicated group (creditrl/weights/broadcast.py)
    cuda_ipc      learner rank r shares a GPU bucket by CUDA IPC handle     colocated GPU (vLLM engines)
                  with the engines on its GPU (creditrl/weights/cuda_ipc.py)

Both rollout engines (`rollout.engine`: hf, vllm) take object_store and broadcast syncs, on CPU and GPU; a vLLM
engine receives a broadcast in its own worker process and loads every sync as one update (so the parts of a
fused layer may arrive in different buckets).

A weight sync is driven by one `WeightSync` object (`make_weight_sync`): `push(version)` after every update,
`resync_actor(i)` for a rollout actor that was restarted mid-step (always through the object store, which
needs no group membership; a broadcast group is rebuilt before its next push).

LoRA: with `model.lora.enabled` only the adapter tensors travel (`adapter_only`); the rollout engines hold the
same frozen base weights, loaded from `model.path`. Tensors are sent in their training dtype, never force-cast
(some parameters must stay fp32; verl `BucketedWeightSender`).
"""

from __future__ import annotations

import logging

from creditrl.distributed.errors import WorkerFailure
from creditrl.weights.buckets import (ObjectStoreTransport, WeightTransport, is_adapter_tensor, iter_buckets,
                                      plan_buckets_by_numel, strip_wrapper_prefixes, tensor_bytes)

log = logging.getLogger(__name__)


class WeightSync:
    """Object-store sync: `push(version)` = learner weights -> every rollout actor, bucket by bucket.

    The learner group produces the buckets (`weight_buckets`, gathered in lockstep under ZeRO-3), the rollout
    group applies them and records the version, which then travels with every `RolloutOutput`. The last
    sync's buckets stay in the object store until the next sync, so a restarted actor is re-synced from them.
    """

    name = "object_store"

    def __init__(self, learner, rollout, bucket_bytes: int, adapter_only: bool):
        self.learner, self.rollout = learner, rollout
        self.bucket_bytes, self.adapter_only = bucket_bytes, adapter_only
        self.version = 0
        self._handles: list = []

    def push(self, version: int) -> int:
        """Sync every actor to the learner's current weights; returns the number of buckets sent."""
        self._claim(version)
        self._handles = self.learner.weight_buckets(self.bucket_bytes, self.adapter_only)
        self.rollout.update_weights_from(self._handles, version)
        return len(self._handles)

    def _claim(self, version: int) -> None:
        """This sync now defines the rollout weights: restarted actors are re-synced by it, to `version`."""
        self.version = version
        self.rollout.resync = self.resync_actor

    def resync_actor(self, i: int) -> None:
        """A restarted actor: the current weights (the learner has not stepped since the last push)."""
        if not self._handles:
            self._handles = self.learner.weight_buckets(self.bucket_bytes, self.adapter_only)
        self.rollout.update_actor(i, self._handles, self.version)


class BroadcastSync(WeightSync):
    """Learner rank 0 broadcasts flat buckets to every rollout engine over a dedicated process group
    (gloo on CPU, NCCL on GPU; creditrl/weights/broadcast.py). Every learner rank takes part in the
    ZeRO-3 gathers; only rank 0 sends. The group is built at the first push and rebuilt (new store prefix)
    before the first push after a failed one or after a rollout actor was restarted; the restarted actor itself
    gets the current weights through the object store at once (`resync_actor`): the other members may be
    generating then.

    Fail fast: the first rollout actor that fails to join or to receive (an error, e.g. a vLLM load error, a
    dead actor or engine) aborts the group (`abort_group`), so learner rank 0 and the other members stop
    within milliseconds instead of waiting for the group timeout (`resources.comm_timeout_s`). The push then
    restarts the actors that died, rebuilds the group and retries once.
    """

    name = "broadcast"

    def __init__(self, learner, rollout, bucket_bytes: int, adapter_only: bool, backend: str, timeout_s: float):
        super().__init__(learner, rollout, bucket_bytes, adapter_only)
        self.backend, self.timeout_s = backend, timeout_s
        self.generation = 0
        self._built_at_restarts: int | None = None  # rollout.restarts when the group was built
        self._broken = False  # a broadcast failed: every member rejoins a new group before the next one
        self._address: tuple[str, int, str] | None = None  # (host, port, prefix) of the current group
        self.manifest = learner.weight_manifest(bucket_bytes, adapter_only)

    def _abort(self, reason: str) -> None:
        """Abort the current group's sync (every member's wait raises at once)."""
        from creditrl.weights.broadcast import abort_group

        host, port, prefix = self._address
        try:
            abort_group(host, port, prefix, reason)
        except Exception as exc:  # the store lives on learner rank 0: if that is gone, its peers fail anyway
            log.warning("weight sync: could not abort group %s: %s", prefix, exc)

    def _build(self) -> dict[int, BaseException]:
        """A new group (learner rank 0 + every rollout actor); returns the actors that failed to join."""
        self.generation += 1
        self._broken = True  # until every member has joined
        host, port, prefix = self._address = self.learner.open_sync_store(self.timeout_s)
        world = 1 + len(self.rollout.actors)
        self.learner.start_sync_group(self.backend, prefix, world, self.timeout_s)  # rank 0 waits for the others
        failed = self.rollout.join_sync_group(self.backend, host, port, prefix, world, self.timeout_s,
                                              on_failure=self._abort)
        try:
            self.learner.finish()
        except WorkerFailure:
            if not failed:
                raise
            # rank 0 left the rendezvous that the failed actors aborted (LearnerGroup logs it as an error)
            log.info("weight sync: learner rank 0 left aborted group %s", prefix)
        if not failed:
            self._built_at_restarts, self._broken = self.rollout.restarts, False
        return failed

    def _attempt(self, version: int) -> tuple[dict[int, BaseException], str | None]:
        """One try: (re)build the group if needed, broadcast; returns (failed actors, learner error or None)."""
        if self._broken or self._built_at_restarts != self.rollout.restarts:
            failed = self._build()
            if failed:
                return failed, None
        self.learner.start_broadcast(self.bucket_bytes, self.adapter_only, self.manifest)
        failed = self.rollout.receive_weights(self.manifest, version, on_failure=self._abort)
        result = self.learner.finish()
        return failed, None if result["ok"] else result.get("error", "unknown error")

    def push(self, version: int) -> int:
        import ray

        self._claim(version)
        errors = []
        for _ in range(2):
            failed, learner_error = self._attempt(version)
            if not failed and learner_error is None:
                self._handles = []  # object-store copies are made only when an actor needs a resync
                return len(self.manifest)
            self._broken = True
            errors.append(_describe_attempt(failed, learner_error))
            if not failed:
                raise RuntimeError(f"weight sync broadcast failed on learner rank 0 with every rollout actor "
                                   f"alive: {learner_error}")
            # Died or hung: restart (raises past max_rollout_restarts). Raised inside the actor (an aborted
            # group, a load error): alive, it only rejoins the rebuilt group.
            dead = {i: e for i, e in failed.items() if not isinstance(e, ray.exceptions.RayTaskError)}
            self.rollout.restart_failed(dead, "receive_weights")
            log.warning("weight sync: broadcast failed (%s); restarted actors %s, rebuilding the group and "
                        "retrying", errors[-1], sorted(dead))
        raise RuntimeError("weight sync broadcast failed twice in a row: " + " | ".join(errors))

    def resync_actor(self, i: int) -> None:
        handles = self.learner.weight_buckets(self.bucket_bytes, self.adapter_only)
        self.rollout.update_actor(i, handles, self.version)


def _describe_attempt(failed: dict[int, BaseException], learner_error: str | None) -> str:
    """One line per failed member of a broadcast attempt (first line of each error)."""
    parts = [f"learner rank 0: {learner_error}"] if learner_error is not None else []
    parts += [f"rollout actor {i}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
              for i, e in sorted(failed.items())]
    return "; ".join(parts)


class CudaIpcSync(WeightSync):
    """Colocated GPU: bucket k is gathered on every learner rank, each rank shares it by CUDA IPC handle, and
    every rollout engine loads it from the learner rank on its own GPU (rollout actor i shares bundle
    i % learner_ranks, creditrl/distributed/placement.py). One bucket at a time: the learner frees bucket k
    before packing k+1, so the extra GPU memory is one bucket, not a model copy."""

    name = "cuda_ipc"

    def __init__(self, learner, rollout, bucket_bytes: int, adapter_only: bool):
        super().__init__(learner, rollout, bucket_bytes, adapter_only)
        self.num_buckets = len(learner.weight_manifest(bucket_bytes, adapter_only))

    def _push_to(self, actors: list[int], version: int) -> int:
        """Bucket by bucket to `actors`; an actor that fails is dropped from the remaining buckets and, once
        the learner has released its buffers, restarted and re-synced on its own."""
        failed: dict[int, BaseException] = {}
        for k in range(self.num_buckets):
            per_rank = self.learner.ipc_bucket(k, self.bucket_bytes, self.adapter_only)
            live = [i for i in actors if i not in failed]
            failed.update(self.rollout.load_ipc_bucket({i: per_rank[i % len(per_rank)] for i in live}, k,
                                                       self.num_buckets, version))
            self.learner.release_ipc()
        if failed:
            self.rollout.restart_failed(failed, "load_ipc_bucket", resync=True)
        return self.num_buckets

    def push(self, version: int) -> int:
        self._claim(version)  # a restarted actor is re-synced to this version inside _push_to
        return self._push_to(list(range(len(self.rollout.actors))), version)

    def resync_actor(self, i: int) -> None:
        self._push_to([i], self.version)


def resolve_transport(name: str, use_gpu: bool, placement: str, lora: bool) -> str:
    """`resources.weight_sync: auto` -> a concrete transport (see the table in this module's docstring)."""
    if name != "auto":
        return name
    if lora:
        return "object_store"  # adapters are small; vLLM loads them as LoRARequests, not through workers
    if use_gpu and placement == "colocated":
        return "cuda_ipc"
    return "broadcast"


def make_weight_sync(cfg, learner, rollout) -> WeightSync:
    """The recipe's weight sync between a LearnerGroup and a RolloutGroup."""
    rc = cfg.resources
    name = resolve_transport(rc.weight_sync, rc.use_gpu, rc.placement, cfg.model.lora.enabled)
    bucket_bytes, adapter_only = rc.weight_sync_bucket_mb << 20, cfg.model.lora.enabled
    if name == "object_store":
        return WeightSync(learner, rollout, bucket_bytes, adapter_only)
    if name == "broadcast":
        return BroadcastSync(learner, rollout, bucket_bytes, adapter_only, "nccl" if rc.use_gpu else "gloo",
                             rc.comm_timeout_s)
    if name == "cuda_ipc":
        return CudaIpcSync(learner, rollout, bucket_bytes, adapter_only)
    raise ValueError(f"unknown resources.weight_sync '{name}' (auto, object_store, broadcast, cuda_ipc)")
