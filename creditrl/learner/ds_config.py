"""The DeepSpeed config of a learner rank, built from the recipe (one place, no JSON files to keep in sync)."""

from __future__ import annotations

from creditrl.config.schema import RecipeConfig


def deepspeed_config(cfg: RecipeConfig, max_grad_norm: float | None = None) -> dict:
    """ZeRO stage / offload / bf16 from `resources`; clipping from `max_grad_norm` (default `train.max_grad_norm`;
    the critic's engine passes `critic.max_grad_norm`).

    - The optimizer is a client `torch.optim.AdamW` (no `optimizer` section): the fused_adam JIT build costs
      about 42 s on CPU (install.md §6); with `offload_optimizer` DeepSpeed needs its CPU Adam instead, built
      by the worker.
    - `managed_gradient_accumulation: false`: the learner owns the accumulation boundary. `backward()` only
      accumulates locally and each `step()` reduces and applies one optimizer update, so a rank may run any
      number of micro-batches per mini-batch. The batch-size fields are bookkeeping only.
    """
    rc = cfg.resources
    zero: dict = {"stage": rc.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if rc.offload_optimizer and rc.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": rc.use_gpu}
    if rc.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": rc.use_gpu}
    if rc.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False  # creditrl gathers itself, in buckets
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.train.max_grad_norm if max_grad_norm is None else max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": rc.bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
