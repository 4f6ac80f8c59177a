"""TDPO1 / TDPO2 — Token-level Direct Preference Optimization (Zeng et al., ICML 2024, arXiv 2404.11999).

Spec: algorithms-token-level.md §15.2 (reference code `tdpo_loss`, `_tdpo_get_batch_logps`). Per pair, with
sums over valid response tokens (EOS included, `average_log_prob=False`):

    M(y)        = Σ_t m_t (ℓ_t − ℓ_ref,t)
    D_SeqKL(y)  = Σ_t m_t KL(π_ref(·|s_t) ‖ π_θ(·|s_t))      (full-vocabulary forward KL, reference first)
    Δ           = M(y_w) − M(y_l)
    TDPO1: z = Δ − (D_SeqKL(y_l) − D_SeqKL(y_w))               gradients through both KL terms
    TDPO2: z = Δ − α (D_SeqKL(y_l) − sg(D_SeqKL(y_w)))          only the rejected KL gets gradient
    loss  = −log σ(β z) per pair (β multiplies the whole bracket, α·KL included)
    rewards: β (M(y_w) + D_SeqKL(y_w)) and β (M(y_l) + D_SeqKL(y_l)) (detached; unlike DPO they include the KL)

The per-token KL is computed by `creditrl.kernels.linear_token_stats(..., ref=(ref_hidden, ref_weight))`
(`ref_kl`), never through [N, V] logits; this module only combines the per-token tensors.
Defaults: β = 0.1, α = 0.5; "TDPO2 with α = 0.5, β = 0.1" is the intended recipe (the yaml flip, §15.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor


@dataclass
class TDPOOutput:
    loss: Tensor  # [B] per-pair losses (batch loss = mean)
    chosen_rewards: Tensor  # [B] β (M(y_w) + D_SeqKL(y_w)), detached
    rejected_rewards: Tensor  # [B] β (M(y_l) + D_SeqKL(y_l)), detached
    chosen_kl: Tensor  # [B] D_SeqKL(y_w), detached
    rejected_kl: Tensor  # [B] D_SeqKL(y_l), detached


def tdpo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, chosen_seq_kl: Tensor, rejected_seq_kl: Tensor,
              beta: float = 0.1, alpha: float = 0.5, variant: Literal["tdpo1", "tdpo2"] = "tdpo2") -> TDPOOutput:
    """Per-pair TDPO loss from M(y_w), M(y_l), D_SeqKL(y_w), D_SeqKL(y_l) (all [B]); see the module docstring.

    `alpha` is used by TDPO2 only (TDPO1 has an implicit α = 1 and gradients through both KL terms).
    """
    shapes = {tuple(t.shape) for t in (chosen_logratio, rejected_logratio, chosen_seq_kl, rejected_seq_kl)}
    if len(shapes) != 1 or chosen_logratio.dim() != 1:
        raise ValueError(f"all TDPO inputs must be [B] tensors of one shape, got {sorted(shapes)}")
    if variant not in ("tdpo1", "tdpo2"):
        raise ValueError(f"variant must be 'tdpo1' or 'tdpo2', got {variant!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    delta = chosen_logratio - rejected_logratio  # [B]
    if variant == "tdpo1":
        z = delta - (rejected_seq_kl - chosen_seq_kl)
    else:
        z = delta - alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    loss = -F.logsigmoid(beta * z)
    return TDPOOutput(
        loss=loss,
        chosen_rewards=beta * (chosen_logratio + chosen_seq_kl).detach(),
        rejected_rewards=beta * (rejected_logratio + rejected_seq_kl).detach(),
        chosen_kl=chosen_seq_kl.detach(),
        rejected_kl=rejected_seq_kl.detach(),
    )
