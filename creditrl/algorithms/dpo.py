"""DPO and cDPO ("Critical Tokens Matter") preference losses: pure tensor math (algorithms-token-level.md §15).

Notation, for a pair (y_w chosen, y_l rejected) and response-aligned [B, T] tensors:

    Δ_t  = m_t (ℓ_t − ℓ_ref,t)                 per-token log-ratio (policy minus reference log-prob)
    M(y) = Σ_t Δ_t                              sequence log-ratio
    DPO:  z = M(y_w) − M(y_l);  loss = −(1−ε) log σ(βz) − ε log σ(−βz)        (ε = label smoothing, TRL)
    cDPO: z = Σ_t w⁺_t Δ⁺_t − Σ_t w⁻_t Δ⁻_t (mode "sequence", the paper's reading, default)
          z_t = w⁺_t Δ⁺_t − w⁻_t Δ⁻_t, sigmoid per position (mode "per_position", the released code)

DPO: Rafailov et al. 2023 (arXiv 2305.18290). cDPO: Lin et al. 2024 (arXiv 2411.19943); contrastive token
scores p_t = softmax((1+β_CE) z_pos − β_CE z_neg)[y_t] come from a positive and a negative model; the rejected
response's weights are w⁻ = 1 − p_t (critical = low CE probability), the chosen ones are 1 (`only_neg`, the
reference default) or p_t.

No Ray/DeepSpeed imports: this is pure math, called by `pair_loss.py` (the learner's preference step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_preference_loss(z: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """−(1−ε) log σ(β z) − ε log σ(−β z), elementwise (the Bradley–Terry loss with TRL's label smoothing)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)


def masked_log_ratios(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """Δ_t = m_t (ℓ_t − ℓ_ref,t): [B, T] (zero at padding; the reference is treated as a constant)."""
    if logp.shape != ref_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"shape mismatch: logp {tuple(logp.shape)}, ref {tuple(ref_logp.shape)}, "
                         f"mask {tuple(mask.shape)}")
    return (logp - ref_logp.detach()) * mask


@dataclass
class DPOOutput:
    loss: Tensor  # [B] per-pair losses (the batch loss is their mean)
    chosen_rewards: Tensor  # [B] β M(y_w), detached
    rejected_rewards: Tensor  # [B] β M(y_l), detached


def dpo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> DPOOutput:
    """Per-pair DPO loss from the sequence log-ratios M(y_w), M(y_l) ([B] each).

    loss = −(1−ε) log σ(β (M(y_w) − M(y_l))) − ε log σ(−β (M(y_w) − M(y_l))); implicit rewards β M(y).
    """
    if chosen_logratio.shape != rejected_logratio.shape or chosen_logratio.dim() != 1:
        raise ValueError(f"chosen and rejected log-ratios must both be [B]; got {tuple(chosen_logratio.shape)} "
                         f"and {tuple(rejected_logratio.shape)}")
    loss = sigmoid_preference_loss(chosen_logratio - rejected_logratio, beta, label_smoothing)
    return DPOOutput(loss, beta * chosen_logratio.detach(), beta * rejected_logratio.detach())


def cdpo_token_weights(ce_logp: Tensor, mask: Tensor, side: Literal["chosen", "rejected"], only_neg: bool = True,
                       eos_weight_one: bool = True) -> Tensor:
    """cDPO weights from the contrastive log-probs log p_t ([B, T]) of one side of the pairs.

    chosen:   w⁺_t = 1 if `only_neg` (reference default) else p_t
    rejected: w⁻_t = 1 − p_t (tokens the negative model prefers get small p_t, hence weight ≈ 1)
    The reference appends the EOS after the scored text with weight 1 on both sides; `eos_weight_one` does the
    same for the last valid position of each row. Padding gets weight 0. Weights are constants (no gradient).
    """
    if side not in ("chosen", "rejected"):
        raise ValueError(f"side must be 'chosen' or 'rejected', got {side!r}")
    p = ce_logp.detach().exp()  # [B, T]
    if side == "chosen":
        w = torch.ones_like(p) if only_neg else p
    else:
        w = 1.0 - p
    if eos_weight_one:
        lengths = mask.sum(-1).long()  # [B]
        rows = (lengths > 0).nonzero().squeeze(1)
        w = w.clone()
        w[rows, lengths[rows] - 1] = 1.0
    return w * mask


def cdpo_loss(chosen_logratios: Tensor, chosen_mask: Tensor, chosen_weights: Tensor,
              rejected_logratios: Tensor, rejected_mask: Tensor, rejected_weights: Tensor,
              beta: float = 0.1, label_smoothing: float = 0.0,
              mode: Literal["sequence", "per_position"] = "sequence") -> DPOOutput:
    """cDPO per-pair losses from per-token log-ratios Δ [B, T] (already masked) and weights w [B, T].

    sequence:     z = Σ_t w⁺_t Δ⁺_t − Σ_t w⁻_t Δ⁻_t,  loss_i = −log σ(β z_i)   (paper reading; spec default)
    per_position: z_t = w⁺_t Δ⁺_t − w⁻_t Δ⁻_t aligned by response position, loss_i = mean over t < T_i of
                  −log σ(β z_t), T_i = max(len(y_w), len(y_l)). Deviation from the reference code, which averages
                  over every entry of the padded batch (so its value depends on the batch's padding); here
                  each pair counts its own positions (padded positions inside a pair still add log 2, as there).
    Rewards (TRL style, detached): β · mean over valid tokens of Δ⁺ (chosen) and of Δ⁻ (rejected).
    """
    if mode not in ("sequence", "per_position"):
        raise ValueError(f"cdpo mode must be 'sequence' or 'per_position', got {mode!r}")
    for name, t in (("chosen_mask", chosen_mask), ("chosen_weights", chosen_weights)):
        if t.shape != chosen_logratios.shape:
            raise ValueError(f"{name} must have the shape of chosen_logratios {tuple(chosen_logratios.shape)}")
    for name, t in (("rejected_mask", rejected_mask), ("rejected_weights", rejected_weights)):
        if t.shape != rejected_logratios.shape:
            raise ValueError(f"{name} must have the shape of rejected_logratios {tuple(rejected_logratios.shape)}")
    if chosen_logratios.shape[0] != rejected_logratios.shape[0]:
        raise ValueError("chosen and rejected must have the same number of pairs")
    wc = chosen_weights.detach() * chosen_logratios * chosen_mask  # [B, Tw]
    wr = rejected_weights.detach() * rejected_logratios * rejected_mask  # [B, Tl]
    if mode == "sequence":
        loss = sigmoid_preference_loss(wc.sum(-1) - wr.sum(-1), beta, label_smoothing)
    else:
        t = max(wc.shape[1], wr.shape[1])
        z = F.pad(wc, (0, t - wc.shape[1])) - F.pad(wr, (0, t - wr.shape[1]))  # [B, T]
        span = torch.maximum(chosen_mask.sum(-1), rejected_mask.sum(-1)).clamp(min=1)  # [B]
        inside = (torch.arange(t, device=z.device)[None, :] < span[:, None]).to(z.dtype)  # [B, T]
        loss = (sigmoid_preference_loss(z, beta, label_smoothing) * inside).sum(-1) / span
    mean_c = (chosen_logratios * chosen_mask).sum(-1) / chosen_mask.sum(-1).clamp(min=1)
    mean_r = (rejected_logratios * rejected_mask).sum(-1) / rejected_mask.sum(-1).clamp(min=1)
    return DPOOutput(loss, beta * mean_c.detach(), beta * mean_r.detach())
