"""KL-Cov: a |log-ratio| penalty on the highest-covariance tokens, no clipping (arXiv 2505.22617, section 5).

    delta = l - l_old, r = exp(delta)                 (unclamped, as in the reference)
    L_t = -A r                                        every valid token: no clipping at all
    L_t = -A r + kappa |delta|                        the top k = max(1, floor(ratio * N_valid)) tokens by cov_t

cov_t = (A_t - mean A)(l_t - mean l) over the micro-batch's valid tokens (covariance.py); top-k is
deterministic (`torch.topk`; ties are implementation-defined, section 17.2).
Reference: verl 0.9.1 `compute_policy_loss_kl_cov` (algorithms.md section 2.9). Defaults are verl's
(`kl_cov_ratio` 2e-4, `ppo_kl_coef` kappa 0.1). The original `PRIME-RL/Entropy-Mechanism-of-RL` scripts use
kappa = 1 and give the ratio in percent (`k_percent` 0.2 = 2e-3 for 7B, 0.02 = 2e-4 for 32B): set both
explicitly when reproducing. Statistics are per micro-batch (reference behaviour, section 17.1).
Metrics: `ppo_kl` = mean(l_old - l); `kl_cov/abs_kl` = mean |delta| (verl logs this one as `ppo_kl`);
`kl_cov/selected_frac`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.covariance import token_covariance
from creditrl.algorithms.registry import POLICY_LOSSES


def kl_cov_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 0.1,
) -> tuple[Tensor, Metrics]:
    """Per-token KL-Cov loss [B, T] and its metrics. All inputs [B, T]."""
    delta = logprobs - old_logprobs
    loss = -advantages * torch.exp(delta)
    valid = mask > 0
    selected = torch.zeros_like(valid)
    n_valid = int(valid.sum())
    if n_valid > 0:
        cov = token_covariance(logprobs, advantages, mask)[valid]  # [N_valid]
        k = max(1, int(n_valid * kl_cov_ratio))
        flat_valid = torch.nonzero(valid.reshape(-1)).squeeze(-1)  # [N_valid]
        top = flat_valid[torch.topk(cov, k).indices]
        selected.view(-1)[top] = True
    loss = torch.where(selected, loss + ppo_kl_coef * delta.abs(), loss)
    metrics: Metrics = {
        "ppo_kl": masked_mean(-delta, mask).detach(),
        "kl_cov/abs_kl": masked_mean(delta.abs(), mask).detach(),
        "kl_cov/selected_frac": masked_mean(selected.float(), mask).detach(),
    }
    return loss * mask, metrics


@dataclass
class KLCovConfig:
    kl_cov_ratio: float = 2e-4  # fraction of valid tokens that get the penalty (a fraction, not percent)
    ppo_kl_coef: float = 0.1  # kappa (original scripts: 1.0)

    def __post_init__(self):
        if not 0 < self.kl_cov_ratio <= 1:
            raise ValueError(f"kl_cov.kl_cov_ratio must be in (0, 1] (got {self.kl_cov_ratio}); it is a fraction")
        if self.ppo_kl_coef < 0:
            raise ValueError(f"kl_cov.ppo_kl_coef must be >= 0 (got {self.ppo_kl_coef})")


@POLICY_LOSSES.register("kl_cov", KLCovConfig)
class KLCov:
    """KL-Cov: unclipped policy gradient with a |log-ratio| penalty on the top-covariance tokens."""

    needs = frozenset()

    def __init__(self, cfg: KLCovConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return kl_cov_loss(
            inputs.logprobs,
            inputs.old_logprobs,
            inputs.advantages,
            inputs.mask,
            self.cfg.kl_cov_ratio,
            self.cfg.ppo_kl_coef,
        )
