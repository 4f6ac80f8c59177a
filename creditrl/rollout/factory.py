"""The rollout engine of a recipe (`rollout.engine`): Hugging Face `generate` or vLLM.

    hf    `HFGenerateEngine` around `shared_model` (the single-process trainer passes the learner's own module:
          an update is visible at once, a sync only records the version) or around a frozen copy of the
          policy loaded from `model.path` (a Ray rollout actor; synced through `update_weights`)
    vllm  `VLLMEngine`: its own copy of the weights in vLLM's engine process, loaded from `model.path` and
          synced through `update_weights` after every update (`shared_model` cannot be shared with it)
"""

from __future__ import annotations

import logging

from creditrl.config.schema import RecipeConfig
from creditrl.rollout.base import RolloutEngine
from creditrl.models.precision import use_bf16_autocast

log = logging.getLogger(__name__)


def make_rollout_engine(cfg: RecipeConfig, pad_id: int, eos_id: int, seed: int,
                        shared_model=None) -> RolloutEngine:
    """The engine of `cfg.rollout.engine`. `seed` seeds vLLM's sampler (calls with `SamplingParams.seed` are
    reproducible on either engine; unseeded HF calls draw from torch's global RNG, which the caller seeds)."""
    if cfg.rollout.engine == "vllm":
        from creditrl.rollout.vllm_engine import VLLMEngine

        if shared_model is not None:
            log.info("rollout.engine=vllm keeps its own copy of the weights (loaded from model.path); the "
                     "learner's module is not shared, weights reach it through update_weights")
        return VLLMEngine(cfg, seed=seed, eos_id=eos_id)
    from creditrl.models.build import build_policy
    from creditrl.rollout.hf_engine import HFGenerateEngine

    model = shared_model if shared_model is not None else build_policy(cfg.model, trainable=False)
    return HFGenerateEngine(model, pad_id, eos_id, cfg.rollout.generation_batch_prompts, use_bf16_autocast(cfg.model),
                            tokenizer=cfg.model.path,  # loaded only for stop strings
                            share_prompts=cfg.rollout.share_prompt_prefill)
