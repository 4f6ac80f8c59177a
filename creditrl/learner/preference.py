"""The preference learner step (DPO / TDPO1 / TDPO2 / cDPO), written once for both learner shells.

`LocalLearner` and every DeepSpeed rank (`DeepSpeedLearnerWorker`) run these functions; a shell only supplies
the `PairShell` methods below (a grad-enabled pair forward through its policy, backward, the optimizer step,
train/eval mode), exactly as for the RL step in `core.py`.

One step on a batch of P pairs (`preference.batch_pairs`), with a plan from `pairs.plan_pairs` (P pairs dealt
to W ranks, lockstep micro-batches):

    for each of this rank's micro-batches (b pairs -> 2b sequences, chosen rows first):
        stats   = pair_token_stats(policy, mb)      logp (grad), ref_logp, ref_kl (TDPO / metrics), ce_logp (cDPO)
        loss_mb = Σ_{pairs in mb} pair_loss / P     P = the GLOBAL pair count
        backward(loss_mb)                           the DeepSpeed shell back-propagates W * loss_mb
    one optimizer step (clip to train.max_grad_norm)

Σ over ranks and micro-batches of loss_mb is the batch mean loss, so the gradient equals the single-process one
(DeepSpeed averages the W ranks' gradients: (1/W) Σ_r W ∇L_r = ∇L). Metrics are per-pair means: every rank
returns sums over its real pairs and `reduce_update` divides by P. Padding micro-batches run forward and a zero
backward for lockstep. Non-finite loss: the same rule as `core.update` (the step is skipped on every rank and
counted in `train/skipped_steps_total` / `train/skipped_steps_consecutive`); the same skip budget and parameter
check (creditrl/learner/health.py, `train/param_max_abs`) stop the run with a `TrainingStopped` error.

The frozen side (`PreferenceModels`) lives on every learner process: the reference (a frozen copy, or the policy
with its LoRA adapter disabled), cDPO's positive and negative models, and the `ReferenceStats` caches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch import Tensor

from creditrl.algorithms.pair_loss import pair_loss, split_pairs
from creditrl.config.schema import RecipeConfig
from creditrl.learner import core, health
from creditrl.learner.batch import MicroBatch, make_micro_batch
from creditrl.learner.dp_split import MicroSpec
from creditrl.learner.pair_stats import ReferenceStats, adapter_disabled_reference, frozen_reference
from creditrl.learner.pairs import Pair, pair_batch
from creditrl.models.build import build_reference
from creditrl.models.precision import use_bf16_autocast

log = logging.getLogger(__name__)

Plan = tuple[tuple[MicroSpec, ...], ...]  # [world] micro-batches of pair indices (`pairs.plan_pairs`)


class PairShell(Protocol):
    """What a learner backend supplies to the preference step."""

    pad_id: int

    def pair_stats(self, mb: MicroBatch, keys: list[str], refs: ReferenceStats, want_kl: bool) -> dict[str, Tensor]:
        """`pair_token_stats` of the policy on a pair micro-batch: [2b, T] tensors (logp with grad when enabled)."""
        ...

    def backward(self, loss: Tensor) -> None: ...

    def step(self, finite: bool) -> float | None: ...

    def set_train(self, mode: bool) -> None: ...

    param_limit: float  # as in core.Shell

    def param_max_abs(self) -> float: ...


# ---- the frozen side ---------------------------------------------------------------------------------------
@dataclass
class PreferenceModels:
    """Reference statistics of one learner process: for training (with cDPO's contrastive models) and for the
    held-out pairs (their own cache; evaluation needs only the reference, always with the KL)."""

    refs: ReferenceStats
    eval_refs: ReferenceStats
    want_kl: bool  # TDPO, or `preference.track_kl`: the policy forward also computes the per-token KL


def build_preference_models(cfg: RecipeConfig, policy, device: torch.device | str = "cpu",
                            partitioned: bool = False) -> PreferenceModels:
    """The reference (`preference.reference_path`, else `model.path`; with LoRA and no reference_path the policy
    with its adapter disabled) and, for cDPO, the positive and negative models: frozen copies, built with
    `models/build.py`. `partitioned`: the policy's parameters are ZeRO-3 shards (see `ReferenceStats.copy_head`)."""
    pc, mc = cfg.preference, cfg.model
    if pc is None:
        raise ValueError("build_preference_models needs a recipe with a `preference:` section")
    frozen = build_reference(mc, pc.reference_path)  # None: LoRA, the base model is the reference
    reference = adapter_disabled_reference(policy) if frozen is None else frozen_reference(frozen.to(device))
    copy_head = partitioned and frozen is None
    contrastive = None
    if pc.loss == "cdpo":
        positive = build_reference(mc, pc.cdpo_positive_path).to(device)
        negative = build_reference(mc, pc.cdpo_negative_path).to(device)
        contrastive = (positive, negative, pc.cdpo_beta_ce)
    want_kl = pc.loss in ("tdpo1", "tdpo2") or pc.track_kl
    refs = ReferenceStats(reference, need_hidden=want_kl, cache=pc.cache_reference, contrastive=contrastive,
                          autocast_bf16=use_bf16_autocast(mc), copy_head=copy_head)
    eval_refs = ReferenceStats(reference, need_hidden=True, cache=True, autocast_bf16=use_bf16_autocast(mc),
                               copy_head=copy_head)
    return PreferenceModels(refs, eval_refs, want_kl)


def _micro_batch(pairs: Sequence[Pair], spec: MicroSpec, pad_id: int) -> tuple[MicroBatch, list[str], int]:
    """(micro-batch of the spec's pairs, its sequence keys, number of pairs)."""
    batch = pair_batch([pairs[i] for i in spec.rows], pad_id)
    return make_micro_batch(batch, list(range(len(batch))), pad_id), batch.prompt_keys, len(spec.rows)


# ---- the update --------------------------------------------------------------------------------------------
@dataclass
class PairUpdatePart:
    """One rank's share of a preference step, reduced by `reduce_update`."""

    loss: float = 0.0  # this rank's share of the batch-mean loss
    sums: dict[str, float] = field(default_factory=dict)  # per-pair metric sums over this rank's real pairs
    pairs: int = 0  # real pairs behind `sums`
    grad_norm: float | None = None  # global pre-clip norm (the same on every rank); None: the step was skipped
    skipped_steps: int = 0  # cumulative (the shell's counter)
    consecutive_skipped: int = 0  # optimizer steps skipped in a row, up to now (the shell's counter)
    param_max_abs: float = math.nan  # max |theta| after the step (NaN: skipped)
    stop: health.Stop | None = None  # why the run must stop; `reduce_update` raises it
    lr: float = 0.0


def update(shell: PairShell, pairs: Sequence[Pair], plan: Plan, cfg: RecipeConfig, models: PreferenceModels,
           rank: int = 0, skipped_before: int = 0, consecutive_before: int = 0) -> PairUpdatePart:
    """One optimizer step on this rank's share of `pairs` (see the module docstring)."""
    pc = cfg.preference
    n_total = len(pairs)
    out = PairUpdatePart(skipped_steps=skipped_before, consecutive_skipped=consecutive_before)
    finite = True
    shell.set_train(True)
    for spec in plan[rank]:
        mb, keys, n = _micro_batch(pairs, spec, shell.pad_id)
        stats = shell.pair_stats(mb, keys, models.refs, models.want_kl)
        if spec.real and finite:
            result = pair_loss(stats, mb.mask.to(stats["logp"].device), pc.loss, pc.beta, pc.alpha,
                               pc.label_smoothing, pc.cdpo_mode, pc.cdpo_only_neg)
            loss = result.loss.sum() / n_total
            if torch.isfinite(loss):
                shell.backward(loss)
                out.loss += loss.item()
                out.pairs += n
                for k, v in result.metrics.items():
                    out.sums[k] = out.sums.get(k, 0.0) + float(v.sum())
                continue
            finite = False
            log.warning("rank %d: non-finite preference loss in a micro-batch: the optimizer step is skipped", rank)
        # padding micro-batch, or after a non-finite loss: a backward for lockstep (zero, or NaN so every rank skips)
        shell.backward((stats["logp"] * (0.0 if finite else float("nan"))).sum())
    out.grad_norm = shell.step(finite)
    core.after_step(shell, out.grad_norm, out, cfg, rank)
    return out


def reduce_update(parts: list[PairUpdatePart], lr: float) -> dict[str, float]:
    """The step's metrics from every rank's share: `train/loss` (the batch mean; NaN when the step was skipped),
    per-pair means `train/<metric>`, `train/grad_norm`, `train/lr`, `train/skipped_steps_total`."""
    n = sum(p.pairs for p in parts)
    sums: dict[str, float] = {}
    for p in parts:
        for k, v in p.sums.items():
            sums[k] = sums.get(k, 0.0) + v
    applied = parts[0].grad_norm is not None
    metrics = {f"train/{k}": v / max(n, 1) for k, v in sums.items()}
    metrics.update({"train/loss": sum(p.loss for p in parts) if applied else math.nan,
                    "train/grad_norm": parts[0].grad_norm if applied else math.nan,
                    "train/lr": lr, "train/skipped_steps_total": float(parts[0].skipped_steps),
                    "train/skipped_steps_consecutive": float(parts[0].consecutive_skipped)})
    if not math.isnan(parts[0].param_max_abs):
        metrics["train/param_max_abs"] = parts[0].param_max_abs
    if parts[0].stop is not None:  # the same on every rank
        raise parts[0].stop.error(metrics)
    return metrics


# ---- held-out pair metrics ---------------------------------------------------------------------------------
EVAL_SUMS = ("pairs", "acc", "reward_acc", "margin", "kl_chosen", "kl_rejected", "tokens_chosen", "tokens_rejected")


@torch.no_grad()
def evaluate_share(shell: PairShell, pairs: Sequence[Pair], plan: Plan, models: PreferenceModels,
                   rank: int = 0) -> dict[str, float]:
    """This rank's sums of the held-out pair statistics (`EVAL_SUMS`), policy in eval mode, under no grad.

    With LP(y) = Σ_t ℓ_t and M(y) = Σ_t (ℓ_t − ℓ_ref,t): acc counts LP(y_w) > LP(y_l), reward_acc counts
    M(y_w) > M(y_l), margin sums LP(y_w) − LP(y_l), kl_* sum the per-token KL(π_ref ‖ π_θ) of each side.
    """
    sums = dict.fromkeys(EVAL_SUMS, 0.0)
    shell.set_train(False)
    try:
        for spec in plan[rank]:
            mb, keys, n = _micro_batch(pairs, spec, shell.pad_id)
            stats = shell.pair_stats(mb, keys, models.eval_refs, True)
            if not spec.real:
                continue  # a padding forward (lockstep under ZeRO-3)
            mask = mb.mask.to(stats["logp"].device)
            lp_w, lp_l = split_pairs((stats["logp"] * mask).sum(-1))
            m_w, m_l = split_pairs(((stats["logp"] - stats["ref_logp"]) * mask).sum(-1))
            kl_w, kl_l = split_pairs((stats["ref_kl"] * mask).sum(-1))
            n_w, n_l = split_pairs(mask.sum(-1))
            sums["pairs"] += n
            sums["acc"] += float((lp_w > lp_l).sum())
            sums["reward_acc"] += float((m_w > m_l).sum())
            sums["margin"] += float((lp_w - lp_l).sum())
            sums["kl_chosen"] += float(kl_w.sum())
            sums["kl_rejected"] += float(kl_l.sum())
            sums["tokens_chosen"] += float(n_w.sum())
            sums["tokens_rejected"] += float(n_l.sum())
    finally:
        shell.set_train(True)
    return sums


def reduce_evaluation(parts: list[dict[str, float]], tag: str = "eval") -> dict[str, float]:
    """Held-out pair metrics from every rank's sums:

        {tag}/pref_acc        mean [LP(y_w) > LP(y_l)]   the policy's own preference (defined at the reference too)
        {tag}/pref_reward_acc mean [M(y_w) > M(y_l)]     DPO implicit-reward accuracy (0 at the reference: ties)
        {tag}/pref_margin     mean LP(y_w) − LP(y_l)
        {tag}/kl_per_token_{chosen,rejected}             Σ KL / Σ tokens of each side
    """
    s = {k: sum(p[k] for p in parts) for k in EVAL_SUMS}
    n = s["pairs"]
    if n == 0:
        raise ValueError("held-out pair evaluation needs at least one pair (preference.eval_files)")
    return {f"{tag}/pref_acc": s["acc"] / n, f"{tag}/pref_reward_acc": s["reward_acc"] / n,
            f"{tag}/pref_margin": s["margin"] / n,
            f"{tag}/kl_per_token_chosen": s["kl_chosen"] / max(s["tokens_chosen"], 1.0),
            f"{tag}/kl_per_token_rejected": s["kl_rejected"] / max(s["tokens_rejected"], 1.0)}
