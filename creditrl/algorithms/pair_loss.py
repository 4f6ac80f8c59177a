"""Per-pair preference losses from pair token statistics: glue to the pure losses of `dpo.py` / `tdpo.py`.

Input: the [2b, T] tensors of one micro-batch (`creditrl.learner.pair_stats.pair_token_stats`), chosen rows
first. Output: per-pair losses [b] (the learner sums them and divides by the step's GLOBAL pair count, so
accumulation over micro-batches and ranks gives exactly the batch mean) and per-pair metric tensors (summed the
same way, then divided by the pair count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.dpo import cdpo_loss, cdpo_token_weights, dpo_loss, masked_log_ratios
from creditrl.algorithms.tdpo import tdpo_loss

LOSSES = ("dpo", "tdpo1", "tdpo2", "cdpo")


@dataclass
class PairLoss:
    loss: Tensor  # [b] per-pair loss (differentiable)
    metrics: dict[str, Tensor]  # name -> [b] per-pair values (detached)


def split_pairs(t: Tensor) -> tuple[Tensor, Tensor]:
    """[2b, ...] -> (chosen [b, ...], rejected [b, ...])."""
    b = t.shape[0] // 2
    return t[:b], t[b:]


def pair_loss(stats: dict[str, Tensor], mask: Tensor, loss: str, beta: float, alpha: float = 0.5,
              label_smoothing: float = 0.0, cdpo_mode: str = "sequence", cdpo_only_neg: bool = True) -> PairLoss:
    """Per-pair loss and metrics of one micro-batch for `loss` in {dpo, tdpo1, tdpo2, cdpo}."""
    if loss not in LOSSES:
        raise ValueError(f"preference.loss must be one of {LOSSES}, got {loss!r}")
    mask_w, mask_l = split_pairs(mask)
    ratios = masked_log_ratios(stats["logp"], stats["ref_logp"], mask)  # [2b, T]
    ratio_w, ratio_l = split_pairs(ratios)
    m_w, m_l = ratio_w.sum(-1), ratio_l.sum(-1)  # [b]
    lp_w, lp_l = split_pairs((stats["logp"] * mask).sum(-1).detach())
    metrics: dict[str, Tensor] = {"logps/chosen": lp_w, "logps/rejected": lp_l,
                                  "logratio/chosen": m_w.detach(), "logratio/rejected": m_l.detach()}
    if "ref_kl" in stats:
        kl_w, kl_l = split_pairs((stats["ref_kl"] * mask).sum(-1))  # D_SeqKL [b]
        n_w, n_l = mask_w.sum(-1).clamp(min=1), mask_l.sum(-1).clamp(min=1)
        metrics.update({"kl/chosen": kl_w.detach(), "kl/rejected": kl_l.detach(),
                        "kl_per_token/chosen": (kl_w / n_w).detach(), "kl_per_token/rejected": (kl_l / n_l).detach()})
    if loss == "dpo":
        out = dpo_loss(m_w, m_l, beta, label_smoothing)
    elif loss in ("tdpo1", "tdpo2"):
        if "ref_kl" not in stats:
            raise ValueError("TDPO needs the per-token reference KL (ref_kl) in the statistics")
        out = tdpo_loss(m_w, m_l, kl_w, kl_l, beta, alpha, loss)
    else:
        if "ce_logp" not in stats:
            raise ValueError("cDPO needs contrastive token scores (ce_logp): set preference.cdpo_positive_path "
                             "and preference.cdpo_negative_path")
        ce_w, ce_l = split_pairs(stats["ce_logp"])
        w_w = cdpo_token_weights(ce_w, mask_w, "chosen", only_neg=cdpo_only_neg)
        w_l = cdpo_token_weights(ce_l, mask_l, "rejected")
        out = cdpo_loss(ratio_w, mask_w, w_w, ratio_l, mask_l, w_l, beta, label_smoothing, cdpo_mode)
        metrics["cdpo/rejected_weight_mean"] = (w_l.sum(-1) / mask_l.sum(-1).clamp(min=1)).detach()
    metrics.update({
        "rewards/chosen": out.chosen_rewards, "rewards/rejected": out.rejected_rewards,
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
        "loss/pair": out.loss.detach(),
    })
    return PairLoss(out.loss, metrics)
