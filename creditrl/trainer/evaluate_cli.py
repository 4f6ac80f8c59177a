"""`creditrl eval TARGET`: evaluate a checkpoint, a run directory, or a recipe's model."""

from __future__ import annotations

from pathlib import Path

from creditrl.config import load_config
from creditrl.data import load_prompt_datasets
from creditrl.rewards import RewardManager
from creditrl.rollout.hf_engine import HFGenerateEngine
from creditrl.trainer.checkpoint import latest_checkpoint
from creditrl.trainer.evaluate import eval_sampling_kwargs, evaluate
from creditrl.models.build import load_causal_lm, load_tokenizer


def evaluate_target(target: str, overrides: list[str]) -> dict[str, float]:
    p = Path(target)
    if p.is_dir():
        ckpt = p if (p / "trainer_state.pt").is_file() else latest_checkpoint(p)
        if ckpt is None:
            raise FileNotFoundError(f"{p} is neither a checkpoint (no trainer_state.pt) nor a run directory with "
                                    f"checkpoints/latest")
        cfg = load_config(ckpt / "config.yaml", overrides)
        model_dir = ckpt / "model"
    else:
        cfg = load_config(target, overrides)
        model_dir = Path(cfg.model.path)
    tokenizer = load_tokenizer(str(model_dir))
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_causal_lm(cfg.model.path, cfg.model.dtype), str(model_dir))
    else:
        model = load_causal_lm(str(model_dir), cfg.model.dtype)
    _, eval_data = load_prompt_datasets(cfg.data, tokenizer, cfg.seed)
    eval_data.rows = eval_data.rows[: cfg.eval.max_prompts]
    engine = HFGenerateEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.eval.batch_prompts,
                              tokenizer=tokenizer)
    return evaluate(engine, eval_data, RewardManager.from_config(cfg.reward), tokenizer, seed=cfg.seed,
                    **eval_sampling_kwargs(cfg, tokenizer))
