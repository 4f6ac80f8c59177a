"""Placement of the worker groups on the Ray cluster (architecture.md §2.1).

- colocated: one placement group; bundle i hosts learner rank i and, round-robin, rollout actors, which share
  the bundle's GPU fractionally (`resources.rollout_gpu_fraction`) so weights can move by CUDA IPC.
- disaggregated: one placement group for the learner ranks, one for the rollout actors (NCCL broadcast).

Bundles are packed per node (`PACK`; `STRICT_PACK` when all must share one node is not required, so a
multi-node cluster spreads a group over nodes as capacity demands). Placement groups are unnamed: named ones
collide when a Ray job retries (verl#439).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from creditrl.config.schema import ResourcesConfig

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """Where to start one actor: Ray options (placement group + bundle, resources)."""

    options: dict


@dataclass
class Placement:
    learner: list[Slot]
    rollout: list[Slot]
    groups: list  # the PlacementGroup objects (removed at shutdown)

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups:
            remove_placement_group(pg)


def _bundle(cpus: float, gpus: float) -> dict:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def _slot(pg, index: int, cpus: float, gpus: float) -> Slot:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index,
                                                placement_group_capture_child_tasks=True)
    return Slot({"num_cpus": cpus, "num_gpus": gpus, "scheduling_strategy": strategy})


def make_placement(rc: ResourcesConfig, timeout_s: float) -> Placement:
    """Reserve the bundles and wait for them (a clear error if the cluster cannot hold them)."""
    import ray
    from ray.util.placement_group import placement_group

    gpu = 1.0 if rc.use_gpu else 0.0
    cpu = rc.cpus_per_actor
    if rc.placement == "colocated":
        per_bundle = [0] * rc.learner_ranks
        for i in range(rc.rollout_actors):
            per_bundle[i % rc.learner_ranks] += 1
        bundles = [_bundle(cpu * (1 + k), gpu) for k in per_bundle]
        pg = placement_group(bundles, strategy="PACK")
        groups = [pg]
        rollout_gpu = rc.rollout_gpu_fraction / max(max(per_bundle), 1) if rc.use_gpu else 0.0
        learner_gpu = (1.0 - rc.rollout_gpu_fraction) if rc.use_gpu else 0.0
        learner = [_slot(pg, i, cpu, learner_gpu) for i in range(rc.learner_ranks)]
        rollout = [_slot(pg, i % rc.learner_ranks, cpu, rollout_gpu) for i in range(rc.rollout_actors)]
    else:
        lpg = placement_group([_bundle(cpu, gpu) for _ in range(rc.learner_ranks)], strategy="PACK")
        rpg = placement_group([_bundle(cpu, gpu) for _ in range(rc.rollout_actors)], strategy="PACK")
        groups = [lpg, rpg]
        learner = [_slot(lpg, i, cpu, gpu) for i in range(rc.learner_ranks)]
        rollout = [_slot(rpg, i, cpu, gpu) for i in range(rc.rollout_actors)]
    ready = [pg.ready() for pg in groups]
    done, _ = ray.wait(ready, num_returns=len(ready), timeout=timeout_s)
    if len(done) < len(ready):
        for pg in groups:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(pg)
        raise RuntimeError(f"the Ray cluster cannot place {rc.learner_ranks} learner ranks and {rc.rollout_actors} "
                           f"rollout actors ({rc.placement}, {cpu} CPU{' + 1 GPU' if gpu else ''} each) within "
                           f"{timeout_s:.0f} s; cluster resources: {ray.cluster_resources()}. Lower "
                           f"resources.cpus_per_actor or the actor counts, or add nodes.")
    log.info("placement: %s, %d learner ranks, %d rollout actors", rc.placement, rc.learner_ranks,
             rc.rollout_actors)
    return Placement(learner, rollout, groups)
