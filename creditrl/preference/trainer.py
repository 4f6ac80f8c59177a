"""Offline preference trainer (`creditrl train` on a recipe with a `preference:` section).

One step: sample `preference.batch_pairs` pairs, split them into micro-batches by a padded-token budget (a pair's
chosen and rejected stay together), run chosen + rejected in one forward per micro-batch, accumulate
Σ_pairs loss / batch_pairs (so accumulation equals the batch mean), clip, step. The reference is a frozen copy
of the starting model (or the base model with the LoRA adapter disabled); its per-sequence statistics are cached.
Evaluation before and after: held-out pair metrics (`evaluate_pairs`) and greedy task accuracy (`evaluate`).
Checkpoints and resume reuse `creditrl.trainer.checkpoint` (atomic save, `latest`, rotation, RNG state).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from creditrl.config import RecipeConfig, dump_yaml
from creditrl.data import PromptDataset, PromptSampler, load_prompt_datasets
from creditrl.data.dataset import load_rows
from creditrl.preference.data import PreferencePair, load_pairs, pair_batch, pair_micro_batches
from creditrl.preference.evaluate import evaluate_pairs
from creditrl.preference.forward import (
    ReferenceStats, adapter_disabled_reference, frozen_reference, pair_token_stats,
)
from creditrl.preference.losses import pair_loss, reduce_metrics
from creditrl.rewards import RewardManager
from creditrl.rollout.hf_engine import HFGenerateEngine
from creditrl.trainer import checkpoint as ckpt
from creditrl.learner.batch import make_micro_batch
from creditrl.trainer.evaluate import evaluate
from creditrl.models.build import load_causal_lm
from creditrl.models.build import load_tokenizer
from creditrl.trainer.loop import seed_everything
from creditrl.trainer.metrics import MetricsWriter
from creditrl.trainer.progress import StepProgress, make_console
from creditrl.models.schedule import lr_factor

log = logging.getLogger(__name__)


@dataclass
class PreferenceResult:
    run_dir: Path
    steps: int
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    history: list[dict] = field(default_factory=list)


class PreferenceLearner:
    """Policy, reference and optimizer of a preference run; `save`/`load` follow `LocalLearner`'s layout."""

    def __init__(self, cfg: RecipeConfig):
        pc, mc, tc = cfg.preference, cfg.model, cfg.train
        self.cfg = cfg
        self.policy = load_causal_lm(mc.path, mc.dtype)
        self.policy.config.use_cache = False
        if mc.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if mc.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lc = mc.lora
            self.policy = get_peft_model(self.policy, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                                 target_modules=lc.target_modules, task_type="CAUSAL_LM"))
        if mc.lora.enabled and pc.reference_path is None:
            reference = adapter_disabled_reference(self.policy)
        else:
            ref = load_causal_lm(pc.reference_path or mc.path, mc.dtype).eval()
            ref.requires_grad_(False)
            reference = frozen_reference(ref)
        contrastive = None
        if pc.loss == "cdpo":
            pos = load_causal_lm(pc.cdpo_positive_path, mc.dtype).eval().requires_grad_(False)
            neg = load_causal_lm(pc.cdpo_negative_path, mc.dtype).eval().requires_grad_(False)
            contrastive = (pos, neg, pc.cdpo_beta_ce)
        self.want_kl = pc.loss in ("tdpo1", "tdpo2") or pc.track_kl
        self.refs = ReferenceStats(reference, need_hidden=self.want_kl, cache=pc.cache_reference,
                                   contrastive=contrastive, autocast_bf16=mc.autocast_bf16)
        # held-out pairs keep their own cache (and no contrastive models: evaluation needs only the reference)
        self.eval_refs = ReferenceStats(reference, need_hidden=True, cache=True, autocast_bf16=mc.autocast_bf16)
        self.policy.train()
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                                           weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc.steps, tc.warmup_steps, tc.lr_schedule, tc.min_lr_ratio))

    def step(self, pairs: list[PreferencePair], pad_id: int) -> dict[str, float]:
        """One optimizer step on `pairs`: micro-batched forward/backward, clipping, AdamW."""
        pc = self.cfg.preference
        self.optimizer.zero_grad(set_to_none=True)
        chunks: list[dict[str, Tensor]] = []
        total = 0.0
        for group in pair_micro_batches(pairs, self.cfg.train.micro_batch_tokens_per_worker):
            batch = pair_batch([pairs[i] for i in group], pad_id)
            mb = make_micro_batch(batch, list(range(len(batch))), pad_id)
            stats = pair_token_stats(self.policy, mb, batch.prompt_keys, self.refs, self.want_kl,
                                     self.cfg.model.autocast_bf16)
            out = pair_loss(stats, mb.mask, pc.loss, pc.beta, pc.alpha, pc.label_smoothing, pc.cdpo_mode,
                            pc.cdpo_only_neg)
            loss = out.loss.sum() / len(pairs)
            loss.backward()
            total += float(loss.detach())
            chunks.append(out.metrics)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        metrics = {f"train/{k}": v for k, v in reduce_metrics(chunks).items()}
        metrics.update({"train/loss": total, "train/grad_norm": float(grad_norm),
                        "train/lr": self.scheduler.get_last_lr()[0]})
        return metrics

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        return ((n, p.detach()) for n, p in self.policy.named_parameters())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory / "model")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   directory / "learner_state.pt")

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        files = sorted((directory / "model").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"checkpoint {directory} has no model weights in {directory / 'model'}")
        state: dict[str, Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        if self.cfg.model.lora.enabled:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.policy, state)
        else:
            missing, unexpected = self.policy.load_state_dict(state, strict=False)
            real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embedding
            if real_missing or unexpected:
                raise ValueError(f"checkpoint {directory} does not match the model: missing {real_missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
        st = torch.load(directory / "learner_state.pt", weights_only=False)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])


def _load_pair_files(cfg: RecipeConfig, files: list[str], tokenizer) -> list[PreferencePair]:
    pc = cfg.preference
    return load_pairs(files, tokenizer, prompt_field=pc.prompt_field, chosen_field=pc.chosen_field,
                      rejected_field=pc.rejected_field, template=cfg.data.template,
                      max_prompt_tokens=cfg.data.max_prompt_tokens, response_suffix=pc.response_suffix)


def _task_eval_prompts(cfg: RecipeConfig, tokenizer) -> PromptDataset:
    """The task prompts of the greedy-accuracy evaluation: data.eval_files (else the held-out split of train)."""
    d = cfg.data
    if d.eval_files:
        return PromptDataset(load_rows(d.eval_files, d.prompt_field, d.answer_field, d.template, tokenizer,
                                       d.max_prompt_tokens))
    return load_prompt_datasets(d, tokenizer, cfg.seed)[1]


def train_preference(cfg: RecipeConfig, console=None) -> PreferenceResult:
    """Run the preference recipe `cfg` (its `preference` section must be set); see the module docstring."""
    if cfg.preference is None:
        raise ValueError("train_preference needs a recipe with a `preference:` section")
    pc = cfg.preference
    console = console or make_console()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = dump_yaml(cfg)
    (run_dir / "config.yaml").write_text(config_yaml)
    seed_everything(cfg.seed)

    tokenizer = load_tokenizer(cfg.model.path)
    train_pairs = _load_pair_files(cfg, pc.train_files, tokenizer)
    eval_pairs = _load_pair_files(cfg, pc.eval_files, tokenizer)[: pc.eval_max_pairs]
    task_eval = _task_eval_prompts(cfg, tokenizer)
    task_eval.rows = task_eval.rows[: cfg.eval.max_prompts]
    rewards = RewardManager.from_config(cfg.reward)
    learner = PreferenceLearner(cfg)
    engine = HFGenerateEngine(learner.policy, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.eval.batch_prompts,
                              cfg.model.autocast_bf16)
    sampler = PromptSampler(len(train_pairs), cfg.seed, cfg.data.shuffle)
    pad_id = tokenizer.pad_token_id
    log.info("preference run %s (%s): %d train / %d held-out pairs, %d trainable parameters", run_dir, pc.loss,
             len(train_pairs), len(eval_pairs), sum(p.numel() for p in learner.params))

    def run_eval(tag: str) -> dict[str, float]:
        t0 = time.perf_counter()
        m = evaluate_pairs(learner.policy, eval_pairs, learner.eval_refs, pad_id,
                           cfg.train.micro_batch_tokens_per_worker, tag)
        learner.policy.eval()
        m.update(evaluate(engine, task_eval, rewards, tokenizer, max_new_tokens=cfg.rollout.max_new_tokens,
                          pass_k=cfg.eval.pass_k, temperature=cfg.eval.temperature, top_p=cfg.rollout.top_p,
                          seed=cfg.seed + 7919, tag=tag))
        learner.policy.train()
        m["timing_s/testing"] = time.perf_counter() - t0
        return m

    start_step, eval_before = 0, {}
    resume_from = ckpt.resolve_resume(cfg.checkpoint.resume, run_dir)
    if resume_from is not None:
        start_step, eval_before = ckpt.restore(resume_from, learner, sampler)
        console.print(f"[bold]resumed[/] from {resume_from} at step {start_step}")
    writer = MetricsWriter(run_dir, cfg.logging.tensorboard, resume_step=start_step if resume_from else None)
    if resume_from is None:
        eval_before = run_eval("eval")
        writer.write(0, eval_before)
        console.print(_eval_line("reference", eval_before))

    history = []
    total = cfg.train.steps
    with StepProgress(console, total, start_step, enabled=cfg.logging.progress, label=pc.loss) as progress:
        for step in range(start_step + 1, total + 1):
            t0 = time.perf_counter()
            pairs = [train_pairs[i] for i in sampler.next_indices(pc.batch_pairs)]
            metrics = learner.step(pairs, pad_id)
            engine.set_version(step)
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step != total:
                metrics.update(run_eval("eval"))
            metrics["timing_s/step"] = time.perf_counter() - t0
            if step == total or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0):
                state = {"sampler": sampler.state_dict(), "eval_before": eval_before}
                ckpt.save_checkpoint(run_dir, step, learner, tokenizer, state, config_yaml, cfg.checkpoint.keep)
            writer.write(step, metrics)
            history.append({"step": step, **metrics})
            progress.advance(_step_line(step, total, metrics))

    eval_after = run_eval("eval")
    writer.write(total, {f"final/{k.split('/', 1)[1]}": v for k, v in eval_after.items()})
    writer.close()
    rewards.close()
    console.print(_eval_line("reference", eval_before))
    console.print(_eval_line("trained  ", eval_after))
    return PreferenceResult(run_dir, total, eval_before, eval_after, history)


def _step_line(step: int, total: int, m: dict[str, float]) -> str:
    kl = m.get("train/kl_per_token/chosen")
    return (f"step {step}/{total} | loss {m['train/loss']:.4f} | reward acc {m['train/rewards/accuracies']:.3f} | "
            f"margin {m['train/rewards/margins']:.3f}" + (f" | KL/token {kl:.4f}" if kl is not None else "")
            + f" | {m['timing_s/step']:.2f}s")


def _eval_line(label: str, m: dict[str, float]) -> str:
    return (f"{label}: held-out pref acc {100 * m.get('eval/pref_acc', float('nan')):.1f}% | greedy acc "
            f"{100 * m.get('eval/greedy_acc', float('nan')):.1f}% | KL/token chosen "
            f"{m.get('eval/kl_per_token_chosen', float('nan')):.4f} rejected "
            f"{m.get('eval/kl_per_token_rejected', float('nan')):.4f}")
