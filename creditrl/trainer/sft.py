"""Supervised fine-tuning (the warm start before RL): teacher forcing on template(prompt) + answer + EOS.

loss = - mean over answer tokens of log pi(answer_t | prompt, answer_<t), computed through the same
`linear_token_stats` op as RL (no [tokens, vocab] logits are materialised).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from creditrl.config import RecipeConfig
from creditrl.config.schema import DataConfig, ModelConfig
from creditrl.data import PromptSampler, load_prompt_datasets
from creditrl.rewards import RewardManager
from creditrl.rollout.hf_engine import HFGenerateEngine
from creditrl.learner.batch import RolloutBatch, make_micro_batch
from creditrl.trainer.evaluate import evaluate
from creditrl.models.build import load_causal_lm
from creditrl.models.build import load_tokenizer
from creditrl.trainer.loop import seed_everything
from creditrl.trainer.progress import StepProgress, make_console
from creditrl.models.schedule import lr_factor
from creditrl.learner.token_stats import micro_batch_token_stats
from creditrl.models.precision import use_bf16_autocast

log = logging.getLogger(__name__)


def sft_target(row, field_name: str | None) -> str:
    """The imitated text: `row.answer` (data.answer_field after data.answer_format: for GSM8K data only the
    final answer), or the row's `field_name` (a dotted path too; a list of messages, e.g. TRL's conversational
    completion, gives the concatenated contents of its turns)."""
    from creditrl.data import DataError
    from creditrl.data.answers import answer_to_text
    from creditrl.data.fields import MISSING, resolve

    if field_name is None:
        return row.answer
    value, problem = resolve(row.fields, field_name)
    if value is MISSING or value is None:
        raise DataError(f"sft.answer_field '{field_name}' is not a field of the data row {row.key} "
                        f"({problem or 'null'}; fields: {', '.join(row.fields)}); set sft.answer_field to one of "
                        f"them or to null")
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return "".join(str(m["content"]) for m in value)
    return answer_to_text(value)


def sft_batch(rows, tokenizer, suffix: str, field_name: str | None = None) -> RolloutBatch:
    """Teacher-forcing batch: the 'response' of each row is its target (+ suffix) + EOS."""
    answers = [tokenizer(sft_target(r, field_name) + suffix, add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id] for r in rows]
    t = max(len(a) for a in answers)
    ids = torch.full((len(rows), t), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), t)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = torch.tensor(a)
        mask[i, : len(a)] = 1
    zeros = torch.zeros(len(rows))
    return RolloutBatch([list(r.prompt_ids) for r in rows], ids, mask, torch.zeros_like(mask), zeros,
                        torch.arange(len(rows)), [r.key for r in rows], torch.ones(len(rows), dtype=torch.bool))


def sft_model_config(cfg: RecipeConfig) -> ModelConfig:
    """The model settings of the model SFT trains: `sft.init_path`, not `model.path` (which names the RL policy,
    often SFT's output), so that `model.autocast_bf16: null` resolves from the width of the model actually trained."""
    return replace(cfg.model, path=cfg.sft.init_path)


def sft_data_config(cfg: RecipeConfig) -> DataConfig:
    """The data settings SFT reads: `data` with `sft.train_files` as the training files when set (a separate SFT
    corpus, e.g. the countdown task's `sft.jsonl`). Held-out prompts stay `data.eval_files` (without them, a
    `data.eval_fraction` split of the files SFT reads)."""
    return cfg.data if cfg.sft.train_files is None else replace(cfg.data, train_files=list(cfg.sft.train_files))


def run_sft(cfg: RecipeConfig, console=None) -> dict[str, float]:
    """Fine-tune `sft.init_path` on the recipe's data and save it to `sft.output_path`; return eval metrics."""
    console = console or make_console()
    sc = cfg.sft
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(sc.init_path)
    train_data, eval_data = load_prompt_datasets(sft_data_config(cfg), tokenizer, cfg.seed)
    eval_data.rows = eval_data.rows[: cfg.eval.max_prompts]
    model = load_causal_lm(sc.init_path, cfg.model.dtype)
    bf16 = use_bf16_autocast(sft_model_config(cfg))
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=sc.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, sc.steps, sc.warmup_steps, "cosine", 0.1))
    sampler = PromptSampler(len(train_data), cfg.seed, shuffle=True)
    t0 = time.perf_counter()
    with StepProgress(console, sc.steps, enabled=cfg.logging.progress, label="sft") as progress:
        for step in range(1, sc.steps + 1):
            rows = [train_data[i] for i in sampler.next_indices(sc.batch_size)]
            batch = sft_batch(rows, tokenizer, sc.answer_suffix, sc.answer_field)
            mb = make_micro_batch(batch, list(range(len(rows))), tokenizer.pad_token_id)
            logp = micro_batch_token_stats(model, mb, 1.0, ("logp",), bf16)["logp"]
            loss = -(logp * mb.mask).sum() / mb.mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 25 == 0 or step == sc.steps:
                progress.advance(f"sft step {step}/{sc.steps} | loss {loss.item():.4f} | lr {sched.get_last_lr()[0]:.2e}")
            else:
                progress.advance()
    out = Path(sc.output_path)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    rewards = RewardManager.from_config(cfg.reward)
    engine = HFGenerateEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.eval.batch_prompts)
    metrics = evaluate(engine, eval_data, rewards, tokenizer, max_new_tokens=cfg.rollout.max_new_tokens,
                       pass_k=cfg.eval.pass_k, temperature=cfg.eval.temperature, top_p=1.0, seed=cfg.seed)
    console.print(f"sft done in {time.perf_counter() - t0:.0f}s, saved to {out}: held-out greedy accuracy "
                  f"{100 * metrics['eval/greedy_acc']:.1f}%")
    return metrics
