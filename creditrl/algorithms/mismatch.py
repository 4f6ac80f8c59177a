"""Sampler-vs-trainer mismatch: the log-ratio the corrections use, and the gap metrics logged every step.

Three log-probs exist per sampled token (algorithms.md section 8): l_mu from the rollout engine (the behaviour
policy mu actually sampled from), l_old from the trainer's recomputation at the start of the step, and l of the
current policy. The mismatch ratio is

    rho_t = exp(clamp(l_old - l_mu, -20, 20))            (the +-20 clamp is verl's safety bound)

TIS, IcePop and MinPRO (tis.py, icepop.py, minpro.py) turn it into detached token weights.
`mismatch_metrics` summarises the gap; its names follow verl's `training/rollout_probs_diff_*` and
`training/rollout_actor_probs_pearson_corr` (computed on probabilities p = exp(l) of the sampled tokens), plus
the log-space gap, the IS ratio and two KL(mu || pi_old) estimates in the style of verl's `rollout_corr/*`.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_RATIO_BOUND = 20.0


def mismatch_log_ratio(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor) -> Tensor:
    """log rho_t = clamp(l_old - l_mu, -20, 20) on valid tokens, 0 on padding (whatever the padding holds).  [B, T]"""
    diff = torch.where(mask > 0, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
    return torch.clamp(diff, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)


@torch.no_grad()
def mismatch_metrics(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """Gap between the trainer's (old) and the sampler's log-probs of the sampled tokens, over valid tokens.

    Keys (all under `mismatch/`):
      rollout_probs_diff_{mean,max,std}     |p_old - p_mu|                        (verl names)
      rollout_actor_probs_pearson_corr      Pearson corr of p_old and p_mu        (absent if undefined: < 2
                                                                                   tokens or a constant vector)
      logprob_abs_diff_{mean,max}           |l_old - l_mu|
      is_ratio_{mean,min,max}               rho = exp(clamp(l_old - l_mu, +-20))
      kl_k1                                 mean(l_mu - l_old)                    KL(mu || pi_old), k1
      kl_k3                                 mean(rho - 1 - log rho)               KL(mu || pi_old), k3
    Empty mask: every key is 0 (the correlation is absent). Inputs [B, T]; std is unbiased.
    """
    valid = mask > 0
    n = int(valid.sum())
    keys = ("rollout_probs_diff_mean", "rollout_probs_diff_max", "rollout_probs_diff_std", "logprob_abs_diff_mean",
            "logprob_abs_diff_max", "is_ratio_mean", "is_ratio_min", "is_ratio_max", "kl_k1", "kl_k3")
    if n == 0:
        return {f"mismatch/{k}": 0.0 for k in keys}
    old = old_logprobs[valid].to(torch.float64)
    mu = rollout_logprobs[valid].to(torch.float64)
    p_old, p_mu = old.exp(), mu.exp()
    prob_diff = (p_old - p_mu).abs()
    log_diff = (old - mu).abs()
    log_rho = torch.clamp(old - mu, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    rho = log_rho.exp()
    out = {
        "rollout_probs_diff_mean": prob_diff.mean().item(),
        "rollout_probs_diff_max": prob_diff.max().item(),
        "rollout_probs_diff_std": prob_diff.std().item() if n > 1 else 0.0,
        "logprob_abs_diff_mean": log_diff.mean().item(),
        "logprob_abs_diff_max": log_diff.max().item(),
        "is_ratio_mean": rho.mean().item(),
        "is_ratio_min": rho.min().item(),
        "is_ratio_max": rho.max().item(),
        "kl_k1": (mu - old).mean().item(),
        "kl_k3": (rho - 1.0 - log_rho).mean().item(),
    }
    corr = _pearson(p_old, p_mu)
    if corr is not None:
        out["rollout_actor_probs_pearson_corr"] = corr
    return {f"mismatch/{k}": v for k, v in out.items()}


def _pearson(x: Tensor, y: Tensor) -> float | None:
    if x.numel() < 2:
        return None
    xc, yc = x - x.mean(), y - y.mean()
    denom = torch.sqrt(xc.square().sum() * yc.square().sum())
    if denom.item() == 0.0:
        return None
    return ((xc * yc).sum() / denom).item()
