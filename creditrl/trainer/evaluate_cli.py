"""`creditrl eval TARGET`: evaluate a checkpoint, a run directory, or a recipe's model."""

from __future__ import annotations

from pathlib import Path

from creditrl.config import load_config
from creditrl.data import load_prompt_datasets
from creditrl.rewards import RewardManager
from creditrl.rollout.hf_engine import HFGenerateEngine
from creditrl.trainer.evaluate import eval_sampling_kwargs, evaluate
from creditrl.trainer.export import load_checkpoint
from creditrl.models.build import load_causal_lm, load_tokenizer


def evaluate_target(target: str, overrides: list[str]) -> dict[str, float]:
    if Path(target).is_dir():  # a checkpoint or a run directory (its latest checkpoint)
        ckpt, cfg, model = load_checkpoint(target, overrides)
        tokenizer = load_tokenizer(str(ckpt / "model"))
    else:
        cfg = load_config(target, overrides)
        tokenizer = load_tokenizer(cfg.model.path)
        model = load_causal_lm(cfg.model.path, cfg.model.dtype)
    _, eval_data = load_prompt_datasets(cfg.data, tokenizer, cfg.seed)
    eval_data.rows = eval_data.rows[: cfg.eval.max_prompts]
    engine = HFGenerateEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.eval.batch_prompts,
                              tokenizer=tokenizer)
    return evaluate(engine, eval_data, RewardManager.from_config(cfg.reward), tokenizer, seed=cfg.seed,
                    **eval_sampling_kwargs(cfg, tokenizer))
