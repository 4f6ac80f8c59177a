"""A pool of Ray actors that score samples, for runs on a Ray cluster (architecture.md §2.1, `RewardPool`).

Same contract as the process pool: results stream back as samples finish (`ray.wait`), each sample has a hard
timeout of `timeout_s + grace_s` (grace: `default_grace`, at most 5 s) after which its actor is killed (`ray.kill`) and replaced, and a dead actor
fails only the sample it was scoring. Actors rebuild the reward functions from their specs, like the process
workers. Ray must already be initialised (the trainer does it when it runs on Ray); this module never starts
a cluster on its own.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

from creditrl.rewards.base import RewardSample, WeightedReward
from creditrl.rewards.executor import SampleResults, default_grace, failed_results, score_sample
from creditrl.rewards.process_pool import rebuild_rewards, worker_payload

log = logging.getLogger(__name__)


class RewardActor:
    """One Ray actor holding the reward functions (per-sample ones; batched rewards stay in the driver)."""

    def __init__(self, payload: list, timeout_s: float | None):
        import creditrl.rewards  # noqa: F401  (registers every reward)

        self.rewards = rebuild_rewards(payload)
        self.timeout_s = timeout_s

    def ready(self) -> bool:
        return True

    def score(self, sample: RewardSample) -> list:
        return score_sample(self.rewards, sample, self.timeout_s)


class RayRewardPool:
    """`workers` Ray actors (one CPU each) scoring samples concurrently."""

    def __init__(self, rewards: list[WeightedReward], workers: int, timeout_s: float | None,
                 grace_s: float | None = None, num_cpus: float = 1.0):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("reward.executor 'ray' needs a running Ray cluster (ray.init() first; the trainer "
                               "does it for Ray runs). On one machine use reward.executor: process.")
        if workers < 1:
            raise ValueError(f"reward.workers must be >= 1 for the ray executor, got {workers}")
        self.rewards = rewards
        self.timeout_s = timeout_s
        grace_s = default_grace(timeout_s) if grace_s is None else grace_s
        self.hard_timeout_s = None if timeout_s is None else timeout_s + grace_s
        self._payload = worker_payload(rewards)
        self._actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(RewardActor)
        self._actors: list[Any] = [self._spawn() for _ in range(workers)]
        ray.get([a.ready.remote() for a in self._actors])

    def _spawn(self) -> Any:
        return self._actor_cls.remote(self._payload, self.timeout_s)

    def _replace(self, slot: int) -> None:
        import ray

        ray.kill(self._actors[slot], no_restart=True)
        self._actors[slot] = self._spawn()

    def map_unordered(self, samples: list[RewardSample]) -> Iterator[SampleResults]:
        import ray

        todo = list(range(len(samples)))[::-1]
        idle = list(range(len(self._actors)))
        running: dict[Any, tuple[int, int, float]] = {}  # ref -> (actor slot, sample index, deadline)
        try:
            while todo or running:
                while idle and todo:
                    slot, i = idle.pop(), todo.pop()
                    try:
                        ref = self._actors[slot].score.remote(samples[i])
                    except Exception as e:  # noqa: BLE001 - e.g. an unpicklable object in sample.meta
                        idle.append(slot)
                        yield i, failed_results(self.rewards, samples[i], f"could not send the sample to an "
                                                f"actor: {type(e).__name__}: {e}")
                        continue
                    running[ref] = (slot, i, time.monotonic() + (self.hard_timeout_s or 0.0))
                if not running:
                    continue
                wait_s = None
                if self.hard_timeout_s is not None:
                    wait_s = max(0.0, min(d for _, _, d in running.values()) - time.monotonic())
                done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
                for ref in done:
                    slot, i, _ = running.pop(ref)
                    try:
                        results = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - the actor died (RayActorError) or failed
                        log.warning("reward actor failed on sample %s (%s); starting a new one",
                                    samples[i].sample_id, type(e).__name__)
                        self._replace(slot)
                        results = failed_results(self.rewards, samples[i], f"reward actor failed: {type(e).__name__}")
                    idle.append(slot)
                    yield i, results
                now = time.monotonic()
                for ref, (slot, i, dl) in list(running.items()):
                    if self.hard_timeout_s is not None and now >= dl:
                        log.warning("reward actor still busy on sample %s after %.3gs: killing it",
                                    samples[i].sample_id, self.hard_timeout_s)
                        running.pop(ref)
                        self._replace(slot)
                        idle.append(slot)
                        yield i, failed_results(self.rewards, samples[i],
                                                 f"timeout: actor killed after {self.hard_timeout_s:g}s")
        finally:
            for slot, _, _ in running.values():  # abandoned by an early stop
                self._replace(slot)

    def close(self) -> None:
        import ray

        for a in self._actors:
            ray.kill(a, no_restart=True)
        self._actors = []
