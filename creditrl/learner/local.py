"""The learner: owns the policy (and reference) model, computes per-token statistics, runs the policy update.

`Learner` is the protocol the trainer drives; `LocalLearner` implements it in one process with torch AdamW.
The DeepSpeed learner group implements the same protocol over Ray actors (issue on scale-out).

Update semantics: the step's samples are split into mini-batches of `mini_batch_prompts * n_samples`
consecutive samples (one optimizer step each, `ppo_epochs` passes). Each mini-batch is split into micro-batches
by a padded-token budget; the old-log-prob pass uses the very same micro-batches, so the first on-policy ratio
is exactly 1 (verl#6280). Losses are aggregated with the mini-batch totals (`AggregationNorm`), so gradient
accumulation over micro-batches gives exactly the mini-batch loss.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator, Protocol

import torch
from torch import Tensor

from creditrl.algorithms import Algorithm
from creditrl.algorithms.base import AggregationNorm, LossInputs, masked_mean
from creditrl.algorithms.mismatch import mismatch_metrics
from creditrl.config import RecipeConfig
from creditrl.learner.batch import MicroBatch, RolloutBatch, make_micro_batch, partition_by_tokens
from creditrl.models.build import build_optimizer, build_policy, build_reference
from creditrl.learner.token_stats import decoder_and_head, micro_batch_token_stats

log = logging.getLogger(__name__)


class Learner(Protocol):
    def compute_old_stats(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]: ...

    def update(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]: ...

    def named_weights(self) -> Iterator[tuple[str, Tensor]]: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


class LocalLearner:
    """Single-process learner (CPU or one GPU): AdamW, warm-up schedule, clipping, micro-batching, LoRA."""

    def __init__(self, cfg: RecipeConfig, algorithm: Algorithm, total_optimizer_steps: int, pad_id: int):
        self.cfg, self.pad_id = cfg, pad_id
        self.policy = build_policy(cfg.model)
        self.ref = build_reference(cfg.model) if "ref_logprobs" in algorithm.needs else None
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.total_optimizer_steps = total_optimizer_steps
        self.optimizer, self.scheduler = build_optimizer(self.params, cfg.train, total_optimizer_steps)
        self.skipped_steps = 0

    # ---- planning ----------------------------------------------------------------------------------------
    def plan(self, batch: RolloutBatch) -> list[list[list[int]]]:
        """Mini-batches, each a list of micro-batches (lists of row indices into the batch)."""
        mini = self.cfg.mini_batch_prompts_resolved * self.cfg.rollout.n_samples
        lengths = [len(p) + int(n) for p, n in zip(batch.prompt_ids, batch.response_lengths)]
        out = []
        for start in range(0, len(batch), mini):
            rows = list(range(start, min(start + mini, len(batch))))
            groups = partition_by_tokens([lengths[i] for i in rows], self.cfg.train.micro_batch_tokens_per_worker)
            out.append([[rows[j] for j in g] for g in groups])
        return out

    def _stats(self, model, mb: MicroBatch, want: tuple[str, ...], keep_hidden: bool = False,
               kernel_options: dict | None = None) -> dict[str, Tensor]:
        return micro_batch_token_stats(model, mb, self.cfg.rollout.temperature, want, self.cfg.model.autocast_bf16,
                                       kernel_options, keep_hidden=keep_hidden)

    def _ref_context(self):
        if self.ref is None and self.cfg.model.lora.enabled:
            return self.policy.disable_adapter()  # the reference is the base model without the adapter
        return nullcontext()

    # ---- old / ref pass ----------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_old_stats(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]:
        """Fill batch.stats with old_logprobs (+ old_entropy, old_hidden, ref_logprobs as the algorithm needs)."""
        needs = algorithm.needs
        # The old-policy entropy is always logged. Parts may need more old-pass kernel outputs ("old_<stat>",
        # e.g. Lp-Reg's "old_proxy_logp"), computed with the kernel options they declare.
        kernel_stats = tuple(sorted(n[len("old_"):] for n in needs if n.startswith("old_")
                                    and n not in ("old_entropy", "old_hidden", "old_logprobs")))
        want = ("logp", "entropy", *kernel_stats)
        kernel_options = getattr(algorithm, "kernel_options", None) or None
        keep_hidden = "old_hidden" in needs
        B, T = batch.mask.shape
        old = {k: torch.zeros(B, T) for k in want}
        ref = torch.zeros(B, T) if "ref_logprobs" in needs else None
        hidden = None
        self.policy.eval()
        for mini in self.plan(batch):
            for rows in mini:
                mb = make_micro_batch(batch, rows, self.pad_id)
                stats = self._stats(self.policy, mb, want, keep_hidden, kernel_options)
                for k in want:
                    old[k][mb.index] = stats[k]
                if keep_hidden:
                    if hidden is None:
                        hidden = torch.zeros(B, T, stats["hidden"].shape[-1])
                    hidden[mb.index] = stats["hidden"]
                if ref is not None:
                    with self._ref_context():
                        ref[mb.index] = self._stats(self.ref or self.policy, mb, ("logp",))["logp"]
        self.policy.train()
        batch.stats["old_logprobs"] = old["logp"]
        batch.stats["old_entropy"] = old["entropy"]
        for k in kernel_stats:
            batch.stats[f"old_{k}"] = old[k]
        if hidden is not None:
            batch.stats["old_hidden"] = hidden
        if ref is not None:
            batch.stats["ref_logprobs"] = ref
        metrics = mismatch_metrics(old["logp"], batch.rollout_logprobs, batch.mask)  # sampler vs trainer gap
        metrics["actor/entropy"] = masked_mean(old["entropy"], batch.mask).item()
        return metrics

    # ---- policy update -----------------------------------------------------------------------------------
    def _loss_inputs(self, batch: RolloutBatch, idx: Tensor, logp: Tensor, entropy: Tensor | None) -> LossInputs:
        s = batch.stats
        extras = {k: v[idx] for k, v in s.items() if k.startswith("old_") and k not in ("old_logprobs", "old_entropy")}
        if "old_hidden" in s:  # THR / NTHR: hidden states, lm_head, sampled ids and the temperature
            extras["lm_head_weight"] = decoder_and_head(self.policy)[1].weight.detach()
            extras["response_ids"] = batch.response_ids[idx]
            extras["temperature"] = torch.tensor(self.cfg.rollout.temperature, dtype=torch.float64)
        return LossInputs(
            logprobs=logp,
            old_logprobs=s["old_logprobs"][idx],
            advantages=batch.advantages[idx],
            mask=batch.mask[idx],
            entropy=entropy,
            old_entropy=s["old_entropy"][idx],
            ref_logprobs=s["ref_logprobs"][idx] if "ref_logprobs" in s else None,
            rollout_logprobs=batch.rollout_logprobs[idx],
            group_ids=batch.group_ids[idx],
            extras=extras,
        )

    def _prepare_scope(self, batch: RolloutBatch, rows: list[int], algorithm: Algorithm, current: bool) -> None:
        """token_stat_scope mini_batch/global: hand the parts the no-grad statistics of the whole scope."""
        prepare = getattr(algorithm, "prepare", None)
        if prepare is None or algorithm.cfg.token_stat_scope == "micro_batch":
            return
        idx = torch.tensor(rows, dtype=torch.long)
        want = ("logp", "entropy")
        if current:  # policy as it is now (start of the mini-batch)
            lp = torch.zeros(len(rows), batch.mask.shape[1])
            ent = torch.zeros_like(lp)
            with torch.no_grad():
                for part_rows in partition_by_tokens([len(batch.prompt_ids[i]) + int(batch.mask[i].sum())
                                                      for i in rows], self.cfg.train.micro_batch_tokens_per_worker):
                    mb = make_micro_batch(batch, [rows[j] for j in part_rows], self.pad_id)
                    st = self._stats(self.policy, mb, want)
                    pos = torch.tensor(part_rows, dtype=torch.long)
                    lp[pos], ent[pos] = st["logp"], st["entropy"]
        else:  # global scope at the start of the step: the policy is pi_old
            lp = batch.stats["old_logprobs"][idx]
            ent = batch.stats.get("old_entropy", torch.zeros_like(lp))[idx]
        prepare(self._loss_inputs(batch, idx, lp, ent))

    def update(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]:
        """ppo_epochs x mini-batches of optimizer steps; returns token-weighted mean metrics."""
        want = ("logp", "entropy") if "entropy" in algorithm.needs else ("logp",)
        sums: dict[str, float] = {}
        weight_total = 0.0
        grad_norms, losses = [], []
        plan = self.plan(batch)
        if algorithm.cfg.token_stat_scope == "global":
            self._prepare_scope(batch, list(range(len(batch))), algorithm, current=False)
        for _ in range(self.cfg.train.ppo_epochs):
            for mini in plan:
                rows = [r for mb_rows in mini for r in mb_rows]
                if algorithm.cfg.token_stat_scope == "mini_batch":
                    self._prepare_scope(batch, rows, algorithm, current=True)
                mask = batch.mask[rows]
                norm = AggregationNorm(num_tokens=mask.sum().clamp_min(1).item(),
                                       num_seqs=(mask.sum(-1) > 0).sum().clamp_min(1).item())
                self.optimizer.zero_grad(set_to_none=True)
                finite, mini_loss = True, 0.0
                for mb_rows in mini:
                    mb = make_micro_batch(batch, mb_rows, self.pad_id)
                    stats = self._stats(self.policy, mb, want)
                    inputs = self._loss_inputs(batch, mb.index, stats["logp"], stats.get("entropy"))
                    loss, metrics = algorithm.loss(inputs, norm)
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss.backward()
                    mini_loss += loss.item()
                    w = float(mb.mask.sum())
                    weight_total += w
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + w * float(v)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm) if finite \
                    else torch.tensor(float("nan"))
                if not finite or not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped_steps += 1
                    log.warning("non-finite %s: optimizer step skipped (%d skipped so far)",
                                "loss" if not finite else "gradient norm", self.skipped_steps)
                    continue
                self.optimizer.step()
                self.scheduler.step()
                grad_norms.append(float(grad_norm))
                losses.append(mini_loss)
        out = {k: v / max(weight_total, 1.0) for k, v in sums.items()}
        out["actor/pg_loss"] = sum(losses) / max(len(losses), 1)
        out["actor/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        out["actor/lr"] = self.scheduler.get_last_lr()[0]
        out["actor/skipped_steps_total"] = float(self.skipped_steps)
        return out

    # ---- weights, checkpoints ----------------------------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        return ((n, p.detach()) for n, p in self.policy.named_parameters())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory / "model")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "skipped_steps": self.skipped_steps}, directory / "learner_state.pt")

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        model_dir = directory / "model"
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"checkpoint {directory} has no model weights in {model_dir}")
        state = {}
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
        self.skipped_steps = st["skipped_steps"]


def count_optimizer_steps(cfg: RecipeConfig) -> int:
    per_step = cfg.train.global_batch_prompts // cfg.mini_batch_prompts_resolved
    return cfg.train.steps * cfg.train.ppo_epochs * per_step

