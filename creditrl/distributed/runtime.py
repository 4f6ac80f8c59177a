"""The Ray runtime: the step loop's rollout engine, learner and weight sync as Ray worker groups.

    engine   RolloutGroup: `resources.rollout_actors` actors, each with the `rollout.engine` of the recipe
    learner  LearnerGroup: `resources.learner_ranks` DeepSpeed ranks running creditrl/learner/core.py
    critic   RayCritic (with a `critic:` section): the value model's DeepSpeed engine in each learner rank
    sync     WeightSync of `resources.weight_sync` (object store / broadcast / CUDA IPC), after every update
             and once at the start (also after a resume), before the first generation

The driver process (where `creditrl train` runs, or the `ray job submit` entrypoint) keeps the loop, the data
sampler, the rewards and the advantages. Placement, fault handling and transports: docs/distributed.md.
"""

from __future__ import annotations

import logging

from creditrl.config import RecipeConfig
from creditrl.distributed.critic import RayCritic
from creditrl.distributed.learner_group import LearnerGroup
from creditrl.distributed.placement import make_placement
from creditrl.distributed.ray_runtime import init_ray
from creditrl.distributed.rollout_group import RolloutGroup
from creditrl.distributed.weight_sync import make_weight_sync

log = logging.getLogger(__name__)


class RayRuntime:
    """Worker groups on a Ray cluster (or a local Ray instance started here and stopped at shutdown)."""

    def __init__(self, cfg: RecipeConfig, total_optimizer_steps: int, pad_id: int, eos_id: int):
        import ray

        self.cfg = cfg
        self._started_ray = not ray.is_initialized()
        init_ray(cfg.resources.ray_address)
        self.placement = make_placement(cfg.resources, cfg.resources.call_timeout_s)
        self.learner = self.engine = self.critic = None
        try:
            self.learner = LearnerGroup(cfg, total_optimizer_steps, pad_id, self.placement.learner)
            # PPO with GAE: the value model in every learner rank, driven from here (creditrl/distributed/critic.py)
            self.critic = RayCritic(cfg, self.learner) if cfg.critic is not None else None
            self.engine = RolloutGroup(cfg, self.placement.rollout, pad_id, eos_id)
            self.weight_sync = make_weight_sync(cfg, self.learner, self.engine)
        except BaseException:
            self.shutdown()
            raise
        log.info("weight sync: %s", self.weight_sync.name)
        # colocated GPU: the rollout engines release their memory for the learner between generations
        self._sleep = cfg.resources.use_gpu and cfg.resources.placement == "colocated"
        self._restarts_seen = 0

    def before_learn(self) -> None:
        if self._sleep:
            self.engine.sleep()

    def sync(self, version: int) -> dict[str, float]:
        if self._sleep:
            self.engine.wake_up(["weights"])  # wake in stages (vllm#15254)
        buckets = self.weight_sync.push(version)
        if self._sleep:
            self.engine.wake_up(["kv_cache"])
        return {"weight_sync/buckets": float(buckets)}

    def step_metrics(self) -> dict[str, float]:
        restarts = self.engine.restarts - self._restarts_seen
        self._restarts_seen = self.engine.restarts
        return {"rollout/actor_restarts": float(restarts)}

    def shutdown(self) -> None:
        import ray

        for group in (self.engine, self.learner):
            if group is not None:
                group.shutdown()
        self.placement.remove()
        if self._started_ray:
            ray.shutdown()
