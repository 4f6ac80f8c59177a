"""The critic on Ray: `RayCritic` runs the shared critic step (creditrl/learner/critic.py) on the learner ranks,
where each rank holds the value model in its own DeepSpeed engine (creditrl/learner/critic_deepspeed.py), and keeps
the counters (`CriticProgress`) in the driver, as `LocalCritic` does on the local backend. The step loop calls the
same four methods on both: `compute_values`, `update`, `warming_up`, and `save` / `load` for checkpoints (the ranks
write their critic shards inside the learner's checkpoint call; this writes the counters)."""

from __future__ import annotations

from pathlib import Path

from creditrl.config import RecipeConfig
from creditrl.distributed.learner_group import LearnerGroup
from creditrl.learner import critic as critic_core
from creditrl.learner.batch import RolloutBatch


class RayCritic:
    def __init__(self, cfg: RecipeConfig, group: LearnerGroup):
        self.group = group
        self.progress = critic_core.CriticProgress(cfg.critic.warmup_steps)
        self.budget = cfg.train.max_consecutive_skipped_steps

    def compute_values(self, batch: RolloutBatch) -> dict[str, float]:
        """V_old of every rank's rows into `batch.stats["old_values"]`; critic/values_mean."""
        return critic_core.store_values(batch, self.group.critic_values(batch))

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """The ranks' critic update against `batch.stats["returns"]`; the step's critic metrics."""
        parts, lr = self.group.critic_update(batch)
        return critic_core.finish_update(parts, lr, batch, self.progress, self.budget)

    @property
    def warming_up(self) -> bool:
        return self.progress.warming_up

    def save(self, directory: Path) -> None:
        self.progress.save(directory)  # the ranks wrote their critic shards inside the learner's save

    def load(self, directory: Path) -> None:
        self.progress.load(directory)  # the ranks loaded their critic shards inside the learner's load
