"""TIS: truncated importance sampling against the sampler/trainer mismatch (Yao, Liu et al., "Your efficient RL
framework secretly brings you off-policy RL training", fengyao.notion.site/off-policy-rl, Aug 2025).

The rollout engine samples from mu (its own kernels and precision), not from the trainer's pi_old. TIS weights
the policy term of each token by the truncated ratio, detached:

    token:     w_t = clamp(exp(clamp(l_old,t - l_mu,t, -20, 20)), C_min, C)
    sequence:  w_i = clamp(exp(clamp(sum_t m (l_old - l_mu), -20, 20)), C_min, C)     broadcast over tokens

and L_t <- w_t L_t before aggregation. The mask (and so every denominator) is unchanged; the KL and entropy
terms added by regularisers are not weighted. Reference: verl 0.9.1 decoupled mode
`compute_rollout_correction_weights` (`rollout_is: token | sequence`, `rollout_is_threshold` C = 2); slime
`vanilla_tis_function` (`tis_clip_low` = C_min, default 0); algorithms.md section 8.1.
Equivalences: TRL `vllm_importance_sampling_mode: token_truncate | sequence_truncate` with
`vllm_importance_sampling_clip_max = C` (TRL has no +-20 log-space clamp). Not offered: verl's
`rollout_is_batch_normalize` (off by default there).
Metrics: `tis/weight_mean`, `tis/truncated_frac` (tokens whose ratio was cut at C or C_min), `tis/ratio_max`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.mismatch import LOG_RATIO_BOUND, mismatch_log_ratio
from creditrl.algorithms.registry import TOKEN_WEIGHTS


@torch.no_grad()
def tis_weights(
    old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    mask: Tensor,
    level: str = "token",
    clip_max: float = 2.0,
    clip_min: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """TIS weights [B, T] (times the mask) and the raw ratios [B, T] they were truncated from."""
    if level == "token":
        log_rho = mismatch_log_ratio(old_logprobs, rollout_logprobs, mask)  # [B, T]
    elif level == "sequence":
        diff = torch.where(mask > 0, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
        log_rho = torch.clamp(diff.sum(-1, keepdim=True), -LOG_RATIO_BOUND, LOG_RATIO_BOUND).expand_as(mask)
    else:
        raise ValueError(f"unknown TIS level '{level}'; choose token or sequence")
    ratio = torch.exp(log_rho)
    return torch.clamp(ratio, clip_min, clip_max) * mask, ratio


@dataclass
class TISConfig:
    level: Literal["token", "sequence"] = "token"  # ratio per token, or per response (summed log-ratio, broadcast)
    clip_max: float = 2.0  # C
    clip_min: float = 0.0  # lower truncation (slime tis_clip_low); 0 = none

    def __post_init__(self):
        if self.level not in ("token", "sequence"):
            raise ValueError(f"tis.level must be 'token' or 'sequence' (got '{self.level}')")
        if not 0.0 <= self.clip_min < self.clip_max:
            raise ValueError(f"tis needs 0 <= clip_min < clip_max (got {self.clip_min}, {self.clip_max})")


@TOKEN_WEIGHTS.register("tis", TISConfig)
class TIS:
    """Truncated importance sampling: weight the policy term by min(pi_old / mu, C), token or sequence level."""

    needs = frozenset({"rollout_logprobs"})

    def __init__(self, cfg: TISConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        if inputs.rollout_logprobs is None:
            raise ValueError("tis needs the sampler's log-probs (rollout_logprobs), but none were given")
        c = self.cfg
        weights, ratio = tis_weights(inputs.old_logprobs, inputs.rollout_logprobs, inputs.mask, c.level,
                                     c.clip_max, c.clip_min)
        truncated = (ratio > c.clip_max) | (ratio < c.clip_min)
        valid = inputs.mask > 0
        metrics: Metrics = {
            "tis/weight_mean": masked_mean(weights, inputs.mask),
            "tis/truncated_frac": masked_mean(truncated.float(), inputs.mask),
            "tis/ratio_max": ratio[valid].max() if valid.any() else torch.tensor(0.0),
        }
        return weights, None, metrics
