"""The critic shell of one DeepSpeed learner rank (`resources.backend: ray`): the value model in its own DeepSpeed
engine, colocated with the policy's engine in the same rank actor and process group.

The critic step itself (values before the update, clipped value loss, mini-batch updates, metrics) is
`creditrl/learner/critic.py`, the same functions the single-process `LocalCritic` runs; this shell supplies the
value forward, backward and optimizer step through DeepSpeed (ZeRO stage, offload and bf16 from `resources`,
gradient clipping from `critic.max_grad_norm`) and the checkpoint layout `<checkpoint>/critic/deepspeed` (ZeRO
shards of the model, optimizer and scheduler) + `<checkpoint>/critic/model` (the HF value model, rank 0).
`RayCritic` (creditrl/distributed/critic.py) drives the ranks and keeps the counters.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from creditrl.config import RecipeConfig
from creditrl.learner.batch import MicroBatch, model_inputs, packing_width, scatter_tokens
from creditrl.learner.critic import critic_train_config
from creditrl.learner.deepspeed_worker import DS_CHECKPOINT_DIR, DS_TAG, _to_device, deepspeed_step
from creditrl.learner.ds_config import deepspeed_config
from creditrl.models.build import build_optimizer, build_value_model
from creditrl.models.precision import use_bf16_autocast


class DeepSpeedCritic:
    """The `CriticShell` of creditrl/learner/critic.py on a DeepSpeed rank (built by `DeepSpeedLearnerWorker`)."""

    def __init__(self, cfg: RecipeConfig, world_size: int, device: torch.device, pad_id: int):
        import deepspeed

        self.cfg, self.world, self.device, self.pad_id = cfg, world_size, device, pad_id
        ccfg, rc = cfg.critic, cfg.resources
        self.model = build_value_model(ccfg.path or cfg.model.path, cfg.model.dtype,
                                       cfg.model.gradient_checkpointing, seed=cfg.seed).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.pack_width = packing_width(cfg.train.pack_groups, self.model)
        optimizer, scheduler = build_optimizer(params, critic_train_config(cfg), max(cfg.train.steps, 1),
                                               cpu_offload=rc.offload_optimizer)
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    model_parameters=params,
                                                    config=deepspeed_config(cfg, max_grad_norm=ccfg.max_grad_norm))

    def values(self, mb: MicroBatch) -> Tensor:
        mb = _to_device(mb, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16_autocast(self.cfg.model)):
            logits = self.engine(**model_inputs(mb, self.engine.module)).logits  # [r, L, 1]
        return scatter_tokens(mb.gather(logits)[:, 0].float(), mb)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss * self.world)  # DeepSpeed averages over the ranks; the loss is a global share

    def step(self, finite: bool) -> float | None:
        return deepspeed_step(self.engine, self.model, finite, self.cfg.resources.zero_stage, self.device)

    def set_train(self, mode: bool) -> None:
        self.engine.train(mode)

    # ---- checkpoints (every rank calls: ZeRO shards are per rank, and ZeRO-3 gathers are collectives) ----------
    def save(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory / DS_CHECKPOINT_DIR), tag=DS_TAG)
        gather = nullcontext()
        if self.cfg.resources.zero_stage == 3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        with gather:
            if rank == 0:
                self.model.save_pretrained(directory / "model")

    def load(self, directory: Path) -> None:
        path = directory / DS_CHECKPOINT_DIR
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {directory.parent} has no DeepSpeed critic state in {path}: was it "
                                    f"written by a run without a `critic:` section, or by the single-process "
                                    f"trainer (resume it with resources.backend=local)?")
        self.engine.load_checkpoint(str(path), tag=DS_TAG)
