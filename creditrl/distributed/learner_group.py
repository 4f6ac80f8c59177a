"""The learner worker group: M DeepSpeed ranks as Ray actors, driven like a single `Learner`.

`LearnerGroup` implements the protocol of `creditrl/learner/local.py` (compute_old_stats, update,
preference_update, evaluate_pairs, named_weights, save, load): the step loop cannot tell it from
`LocalLearner`. Each call plans the data-parallel split once per batch (dp_split.plan_step: balanced by tokens, lockstep micro-batch counts),
sends the batch and the plan to every rank, and merges the partial results. Any rank failing (dead actor,
timeout) raises `LearnerFailure` naming the rank and node; the run stops and resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

from torch import Tensor

from creditrl.algorithms import Algorithm
from creditrl.config.schema import RecipeConfig
from creditrl.learner import core
from creditrl.learner import preference as pref
from creditrl.learner.dp_split import MiniPlan
from creditrl.learner.pairs import Pair, plan_pairs
from creditrl.learner.deepspeed_worker import DeepSpeedLearnerWorker
from creditrl.distributed.errors import LearnerFailure, describe_failure
from creditrl.distributed.placement import Slot
from creditrl.learner.batch import RolloutBatch

log = logging.getLogger(__name__)

RESUME_HINT = "The run stops here; restart it with `creditrl train ... --resume` to continue from the last checkpoint."


def _free_port() -> tuple[str, int]:
    """(node IP, a free TCP port) of the calling process's node: the rendezvous of the group."""
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


class LearnerGroup:
    def __init__(self, cfg: RecipeConfig, total_optimizer_steps: int, pad_id: int, slots: list[Slot]):
        import ray

        self.cfg, self.world = cfg, cfg.resources.learner_ranks
        mini_rows = cfg.mini_batch_prompts_resolved * cfg.rollout.n_samples
        if cfg.preference is not None and cfg.preference.batch_pairs < self.world:
            raise ValueError(f"preference.batch_pairs={cfg.preference.batch_pairs} pairs per step but there are "
                             f"{self.world} learner ranks: every rank needs at least one pair. Raise "
                             f"preference.batch_pairs or lower resources.learner_ranks.")
        if cfg.preference is None and mini_rows < self.world:
            raise ValueError(f"a mini-batch has {mini_rows} samples (train.mini_batch_prompts x rollout.n_samples) "
                             f"but there are {self.world} learner ranks: every rank needs at least one sample. "
                             f"Raise train.mini_batch_prompts or lower resources.learner_ranks.")
        self.timeout = cfg.resources.call_timeout_s
        remote_cls = ray.remote(DeepSpeedLearnerWorker)
        port_task = ray.remote(_free_port).options(**slots[0].options)
        addr, port = ray.get(port_task.remote(), timeout=self.timeout)
        self.actors = [remote_cls.options(**slot.options, max_restarts=0, max_concurrency=1).remote(
            cfg, rank, self.world, addr, port, total_optimizer_steps, pad_id) for rank, slot in enumerate(slots)]
        self.infos = [{"rank": r} for r in range(self.world)]
        self.infos = self._call_all("info", call="startup")
        self._plans: tuple[RolloutBatch, list[MiniPlan]] | None = None
        self._pending: tuple[str, dict] | None = None  # a call started by start_* (weight sync), for finish()
        log.info("learner group: %d ranks on %s", self.world, sorted({i["node_ip"] for i in self.infos}))

    # ---- calls -------------------------------------------------------------------------------------------
    def _call_all(self, method: str, *args, call: str | None = None, ranks: list[int] | None = None) -> list:
        """Call `method` on every rank (or `ranks`) and wait; any failure -> LearnerFailure naming the rank."""
        return self._wait(self._start(method, *args, ranks=ranks), call or method)

    def _start(self, method: str, *args, ranks: list[int] | None = None) -> dict:
        """Start `method` on the ranks without waiting: {rank: ObjectRef} for `_wait`."""
        ranks = list(range(self.world)) if ranks is None else ranks
        return {r: getattr(self.actors[r], method).remote(*args) for r in ranks}

    def _wait(self, refs: dict, call: str) -> list:
        import ray

        results = []
        for rank, ref in refs.items():
            try:
                results.append(ray.get(ref, timeout=self.timeout))
            except (ray.exceptions.RayError, TimeoutError) as exc:
                msg = describe_failure("learner", self.infos[rank], call, exc, RESUME_HINT)
                log.error(msg)
                raise LearnerFailure(msg) from exc
        return results

    def plan(self, batch: RolloutBatch) -> list[MiniPlan]:
        """The step's DP plan, computed once per batch (old-stats pass and update share it)."""
        if self._plans is None or self._plans[0] is not batch:  # identity, not id(): ids are reused after GC
            self._plans = (batch, core.plan_batch(batch, self.cfg, self.world))
        return self._plans[1]

    # ---- the Learner protocol (the step itself is creditrl/learner/core.py, run by every rank) --------------
    def compute_old_stats(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]:
        """Fill batch.stats exactly as LocalLearner does, from the ranks' rows."""
        parts = self._call_all("compute_old_stats", batch, algorithm, self.plan(batch), call="compute_old_stats")
        return core.store_old_stats(batch, parts, algorithm.stats)

    def update(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]:
        parts = self._call_all("update", batch, algorithm, self.plan(batch), call="update")
        for part in parts:  # each rank's per-rank state (e.g. Clip-Cov's stream); the shared state is equal on all
            algorithm.load_state_dict(part.algorithm_state)
        return core.finish_update(batch, parts, parts[0].lr, algorithm.stats)

    def critic_values(self, batch: RolloutBatch) -> list[dict]:
        """Every rank's V_old rows (creditrl/learner/critic.py `old_values`), on the step's plan."""
        return self._call_all("critic_values", batch, self.plan(batch), call="critic values")

    def critic_update(self, batch: RolloutBatch) -> tuple[list, float]:
        """Every rank's share of the critic update, and the critic's learning rate."""
        results = self._call_all("critic_update", batch, self.plan(batch), call="critic update")
        return [part for part, _ in results], results[0][1]

    def preference_update(self, pairs: Sequence[Pair]) -> dict[str, float]:
        """One preference optimizer step: the pairs dealt to the ranks (`plan_pairs`), the shares reduced."""
        plan = plan_pairs(pairs, self.cfg.train.micro_batch_tokens_per_worker, self.world)
        parts = self._call_all("preference_update", list(pairs), plan, call="preference_update")
        return pref.reduce_update(parts, parts[0].lr)

    def evaluate_pairs(self, pairs: Sequence[Pair]) -> dict[str, float]:
        """Held-out pair metrics, each rank evaluating its share of the pairs (lockstep, as in training)."""
        plan = plan_pairs(pairs, self.cfg.train.micro_batch_tokens_per_worker, self.world)
        return pref.reduce_evaluation(self._call_all("evaluate_pairs", list(pairs), plan, call="evaluate_pairs"))

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """All policy weights, gathered to the driver (tests, export). Syncs use `weight_buckets`."""
        state = self._call_all("full_state", False, call="named_weights")[0]
        return iter(state.items())

    def adapter_weights(self) -> dict[str, Tensor]:
        return self._call_all("full_state", True, call="adapter_weights")[0]

    # ---- weight sync (creditrl/distributed/weight_sync.py drives these) -----------------------------------
    def weight_buckets(self, bucket_bytes: int, adapter_only: bool) -> list:
        """Object refs of the weight buckets (gathered in lockstep on every rank, put by rank 0)."""
        return self._call_all("weight_buckets", bucket_bytes, adapter_only, call="weight sync")[0][0]

    def weight_manifest(self, bucket_bytes: int, adapter_only: bool) -> list:
        return self._call_all("weight_manifest", bucket_bytes, adapter_only, ranks=[0])[0]

    def open_sync_store(self, timeout_s: float) -> tuple[str, int, str]:
        return self._call_all("open_sync_store", timeout_s, ranks=[0])[0]

    def start_sync_group(self, backend: str, prefix: str, world_size: int, timeout_s: float) -> None:
        """Rank 0 joins the broadcast group (asynchronously: the rollout engines join meanwhile)."""
        self._pending = ("join weight-sync group",
                         self._start("init_sync_group", backend, prefix, world_size, timeout_s, ranks=[0]))

    def start_broadcast(self, bucket_bytes: int, adapter_only: bool, manifest: list) -> None:
        """Every rank walks the buckets (ZeRO-3 gathers), rank 0 broadcasts them; `finish` waits."""
        self._pending = ("weight sync (broadcast)",
                         self._start("broadcast_weights", bucket_bytes, adapter_only, manifest))

    def finish(self):
        """Wait for the call started by `start_*`; returns rank 0's result."""
        call, refs = self._pending
        self._pending = None
        return self._wait(refs, call)[0]

    def ipc_bucket(self, k: int, bucket_bytes: int, adapter_only: bool) -> list:
        """Bucket k's CUDA IPC handle from every rank (index = rank)."""
        return self._call_all("ipc_bucket", k, bucket_bytes, adapter_only, call=f"weight sync (IPC bucket {k})")

    def release_ipc(self) -> None:
        self._call_all("release_ipc", call="weight sync (IPC release)")

    def save(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._call_all("save", str(directory), call=f"save({directory})")

    def load(self, directory: Path) -> None:
        self._call_all("load", str(directory), call=f"load({directory})")

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # the actor may already be gone; it is killed next anyway
                pass
            ray.kill(a)
