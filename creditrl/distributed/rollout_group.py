"""The rollout worker group: N `RolloutActor`s behind the `RolloutEngine` interface.

`generate` splits the prompts into N contiguous chunks (as even as possible), runs them concurrently, and
concatenates the results in prompt order, so the output is indistinguishable from one engine's (rows are
sample `k % n` of prompt `k // n`). Each chunk gets its own sampling seed, drawn from the group's seeded RNG,
so a re-run of a chunk reproduces it.

Fault handling (architecture.md §2.15): every call has a timeout. A chunk whose actor died or timed out is
re-run: the actor is killed and restarted in the same slot, re-synced to the current weights (`resync`, set
by the WeightSync of creditrl/distributed/weight_sync.py), and given the same chunk with the same seed.
Nothing is lost or duplicated: the step gets exactly one result per prompt. After
`resources.max_rollout_restarts` restarts the run stops with an error that names the actor and node.

Collective calls (joining a broadcast group, receiving a broadcast) wait for the actors together and report
the first failure at once (`on_failure`), so the caller can abort the group instead of leaving the other
members blocked in it until the group timeout.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from typing import Callable

from creditrl.config.schema import RecipeConfig
from creditrl.distributed.errors import WorkerFailure, describe_failure
from creditrl.distributed.placement import Slot
from creditrl.rollout.base import RolloutOutput, SamplingParams
from creditrl.distributed.rollout_actor import RolloutActor

log = logging.getLogger(__name__)


def split_even(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `n_parts` contiguous chunks whose sizes differ by at most one (empty ones dropped)."""
    base, extra = divmod(n_items, n_parts)
    out, start = [], 0
    for i in range(n_parts):
        size = base + (1 if i < extra else 0)
        if size:
            out.append((start, start + size))
        start += size
    return out


class RolloutGroup:
    def __init__(self, cfg: RecipeConfig, slots: list[Slot], pad_id: int, eos_id: int):
        import ray

        self.cfg, self.slots = cfg, slots
        self.pad_id, self.eos_id = pad_id, eos_id
        self.timeout = cfg.resources.call_timeout_s
        self.max_restarts = cfg.resources.max_rollout_restarts
        self.restarts = 0
        self.weight_version = 0
        self.resync: Callable[[int], None] | None = None  # set by the WeightSync: current weights -> actor i
        self._rng = random.Random(cfg.seed + 104729)
        self._remote = ray.remote(RolloutActor)
        self.actors = [self._start(i) for i in range(len(slots))]
        self.infos = [ray.get(a.info.remote(), timeout=self.timeout) for a in self.actors]
        self.on_submitted: Callable[["RolloutGroup"], None] | None = None  # test hook: runs while chunks are in flight

    def _start(self, i: int):
        return self._remote.options(**self.slots[i].options, max_restarts=0).remote(
            self.cfg, i, self.pad_id, self.eos_id)

    # ---- the RolloutEngine interface ---------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutOutput:
        import ray

        chunks = split_even(len(prompt_ids), len(self.actors))
        base_seed = params.seed if params.seed is not None else self._rng.randrange(2**31)
        jobs = [(i, s, e, replace(params, seed=base_seed + i)) for i, (s, e) in enumerate(chunks)]
        refs = {i: self.actors[i].generate.remote(prompt_ids[s:e], p) for i, s, e, p in jobs}
        if self.on_submitted is not None:
            self.on_submitted(self)
        parts: dict[int, RolloutOutput] = {}
        for i, s, e, p in jobs:
            while i not in parts:
                try:
                    parts[i] = ray.get(refs[i], timeout=self.timeout)
                except (ray.exceptions.RayError, TimeoutError) as exc:
                    self._restart(i, exc, f"generate({e - s} prompts)")
                    refs[i] = self.actors[i].generate.remote(prompt_ids[s:e], p)
        out = RolloutOutput.concat([parts[i] for i, *_ in jobs])
        out.weight_version = min(parts[i].weight_version for i, *_ in jobs)
        return out

    def update_weights_from(self, handles: list, version: int) -> None:
        """Push one object-store sync (bucket refs, in order) to every actor; wait for all."""
        import ray

        refs = {i: a.update_weights.remote(handles, version) for i, a in enumerate(self.actors)}
        for i in refs:
            while True:
                try:
                    ray.get(refs[i], timeout=self.timeout)
                    break
                except (ray.exceptions.RayError, TimeoutError) as exc:
                    self._restart(i, exc, "update_weights", resync=False)
                    refs[i] = self.actors[i].update_weights.remote(handles, version)
        self.weight_version = version

    def update_actor(self, i: int, handles: list, version: int) -> None:
        """One actor <- an object-store sync (a restarted actor's re-sync)."""
        import ray

        ray.get(self.actors[i].update_weights.remote(handles, version), timeout=self.timeout)

    def set_version(self, version: int) -> None:  # loop compatibility: versions come with syncs here
        self.weight_version = version

    # ---- broadcast / IPC weight sync (driven by creditrl/distributed/weight_sync.py) ----------------------
    def _wait_all(self, refs: dict, call: str,
                  on_failure: Callable[[str], None] | None = None) -> tuple[dict, dict[int, BaseException]]:
        """Wait for {actor: ref} in completion order; returns (results, failures) instead of raising.
        `on_failure(description)` runs once, at the first failure (an actor that errs, dies or times out)."""
        import ray

        pending = {ref: i for i, ref in refs.items()}
        results, failures = {}, {}
        deadline = time.monotonic() + self.timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:  # the rest hung past resources.call_timeout_s
                failures.update({i: TimeoutError(f"{call} did not return within {self.timeout:.0f} s")
                                 for i in pending.values()})
                pending.clear()
            for ref in ready:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failures[i] = exc
            if failures and on_failure is not None:
                i, exc = next(iter(failures.items()))
                on_failure(describe_failure("rollout actor", self.infos[i], call, exc, "").split("\n")[0])
                on_failure = None
        return results, failures

    def join_sync_group(self, backend: str, host: str, port: int, prefix: str, world_size: int,
                        timeout_s: float, on_failure: Callable[[str], None] | None = None
                        ) -> dict[int, BaseException]:
        """Every actor joins the broadcast group as rank i + 1 (rank 0 is learner rank 0); returns the actors
        that failed (empty on success)."""
        refs = {i: a.join_sync_group.remote(backend, host, port, prefix, i + 1, world_size, timeout_s)
                for i, a in enumerate(self.actors)}
        return self._wait_all(refs, "join weight-sync group", on_failure)[1]

    def receive_weights(self, manifest: list, version: int,
                        on_failure: Callable[[str], None] | None = None) -> dict[int, BaseException]:
        """Every actor receives one broadcast sync; returns the actors that failed (empty on success)."""
        refs = {i: a.receive_weights.remote(manifest, version) for i, a in enumerate(self.actors)}
        failures = self._wait_all(refs, "receive_weights", on_failure)[1]
        if not failures:
            self.weight_version = version
        return failures

    def load_ipc_bucket(self, handles: dict[int, object], index: int, count: int,
                        version: int) -> dict[int, BaseException]:
        """Actor i loads bucket `index` of `count` from `handles[i]` (CUDA IPC); returns the actors that failed."""
        refs = {i: self.actors[i].load_ipc_bucket.remote(h, index, count, version) for i, h in handles.items()}
        return self._wait_all(refs, f"load_ipc_bucket({index})")[1]

    def restart_failed(self, failures: dict[int, BaseException], call: str, resync: bool = False) -> None:
        """Restart every failed actor (WorkerFailure past resources.max_rollout_restarts)."""
        for i, exc in sorted(failures.items()):
            self._restart(i, exc, call, resync=resync)

    # ---- faults ------------------------------------------------------------------------------------------
    def _restart(self, i: int, exc: BaseException, call: str, resync: bool = True) -> None:
        import ray

        msg = describe_failure("rollout actor", self.infos[i], call, exc, "")
        if self.restarts >= self.max_restarts:
            raise WorkerFailure(f"{msg}\nGiving up after {self.restarts} rollout-actor restarts "
                                f"(resources.max_rollout_restarts).") from exc
        self.restarts += 1
        log.warning("%s\nRestarting it (restart %d of at most %d) and re-running its prompts.", msg,
                    self.restarts, self.max_restarts)
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # already dead
            pass
        self.actors[i] = self._start(i)
        self.infos[i] = ray.get(self.actors[i].info.remote(), timeout=self.timeout)
        if resync and self.resync is not None:
            self.resync(i)

    def sleep(self) -> None:
        """Colocated GPU: release the engines' GPU memory for the learner (vLLM sleep mode)."""
        import ray

        ray.get([a.sleep.remote() for a in self.actors], timeout=self.timeout)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Wake in stages: ["weights"] before a sync, ["kv_cache"] after it (vllm#15254)."""
        import ray

        ray.get([a.wake_up.remote(tags) for a in self.actors], timeout=self.timeout)

    def weights(self, i: int) -> dict:
        import ray

        return ray.get(self.actors[i].weights.remote(), timeout=self.timeout)

    def shutdown(self) -> None:
        """Stop every actor: its engine first (vLLM's engine processes), then the actor itself."""
        import ray

        stopping = [a.shutdown.remote() for a in self.actors]
        try:
            ray.get(stopping, timeout=60)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # dead or stuck: killed below anyway
            log.warning("rollout actors did not stop cleanly: %s", exc)
        for a in self.actors:
            ray.kill(a)
