"""The single-process critic shell: the value model, its AdamW and clipping, in this process.

The critic step (values before the update, clipped value loss, mini-batch updates, metrics) is
`creditrl/learner/critic.py`; this shell supplies the value forward, backward and optimizer step, the warm-up
counter and the checkpoint layout (`<checkpoint>/critic/model/`, `critic/critic_state.pt` with the optimizer and
scheduler, `critic/progress.json` with the counters).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from creditrl.config import RecipeConfig
from creditrl.learner import core
from creditrl.learner import critic as critic_core
from creditrl.learner.batch import MicroBatch, RolloutBatch, model_inputs, packing_width, scatter_tokens
from creditrl.learner.local import optimizer_step
from creditrl.models.build import build_optimizer, build_value_model
from creditrl.models.precision import use_bf16_autocast


class LocalCritic:
    """Value model + AdamW (constant `critic.lr`) for the local backend; driven by the step loop's `learn`."""

    def __init__(self, cfg: RecipeConfig, pad_id: int):
        if cfg.critic is None:
            raise ValueError("LocalCritic needs a recipe with a `critic:` section")
        self.cfg, self.ccfg, self.pad_id = cfg, cfg.critic, pad_id
        self.model = build_value_model(self.ccfg.path or cfg.model.path, cfg.model.dtype,
                                       cfg.model.gradient_checkpointing, seed=cfg.seed)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.pack_width = packing_width(cfg.train.pack_groups, self.model)
        tc = critic_core.critic_train_config(cfg)
        self.optimizer, self.scheduler = build_optimizer(self.params, tc, max(cfg.train.steps, 1))
        self.progress = critic_core.CriticProgress(self.ccfg.warmup_steps)

    # ---- the CriticShell of creditrl/learner/critic.py ------------------------------------------------------------
    def values(self, mb: MicroBatch) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16_autocast(self.cfg.model)):
            logits = self.model(**model_inputs(mb, self.model)).logits  # [r, L, 1]
        return scatter_tokens(mb.gather(logits)[:, 0].float(), mb)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self, finite: bool) -> float | None:
        return optimizer_step(self.params, self.optimizer, self.scheduler, self.ccfg.max_grad_norm, finite)

    def set_train(self, mode: bool) -> None:
        self.model.train(mode)

    # ---- what the step loop calls -----------------------------------------------------------------------------
    def compute_values(self, batch: RolloutBatch) -> dict[str, float]:
        """V_old into `batch.stats["old_values"]` (same micro-batches as the policy's old pass); metrics."""
        part = critic_core.old_values(self, batch, core.plan_batch(batch, self.cfg))
        return critic_core.store_values(batch, [part])

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """ppo_epochs x mini-batches of critic steps against `batch.stats["returns"]`; the step's metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        part = critic_core.update(self, batch, core.plan_batch(batch, self.cfg), self.cfg.train.ppo_epochs,
                                  self.ccfg.cliprange_value)
        return critic_core.finish_update([part], self.scheduler.get_last_lr()[0], batch, self.progress,
                                         self.cfg.train.max_consecutive_skipped_steps)

    @property
    def warming_up(self) -> bool:
        """True while the steps done so far are all critic warm-up steps (the policy update is skipped)."""
        return self.progress.warming_up

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / "model")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   directory / "critic_state.pt")
        self.progress.save(directory)

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        files = sorted((directory / "model").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"checkpoint {directory.parent} has no critic weights in {directory / 'model'}: "
                                    f"was it written by a run without a `critic:` section?")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        self.model.load_state_dict(state, strict=True)
        st = torch.load(directory / "critic_state.pt", weights_only=False)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.progress.load(directory)
