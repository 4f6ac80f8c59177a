"""The rollout engine of a recipe (`rollout.engine`): Hugging Face `generate` or vLLM."""

from __future__ import annotations

from creditrl.config.schema import RecipeConfig


def make_rollout_engine(cfg: RecipeConfig, pad_id: int, eos_id: int, seed: int, shared_model=None):
    """hf: an `HFGenerateEngine` around `shared_model` (the single-process learner's own module) or a frozen
    copy of the policy; vllm: a `VLLMEngine` with its own weights (synced through `update_weights`)."""
    if getattr(cfg.rollout, "engine", "hf") == "vllm":
        from creditrl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, seed=seed)
    from creditrl.models.build import build_policy
    from creditrl.rollout.hf_engine import HFGenerateEngine

    model = shared_model if shared_model is not None else build_policy(cfg.model, trainable=False)
    return HFGenerateEngine(model, pad_id, eos_id, cfg.rollout.generation_batch_prompts, cfg.model.autocast_bf16)
