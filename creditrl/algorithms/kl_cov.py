"""KL-Cov: a |log-ratio| penalty on the highest-covariance tokens, no clipping (arXiv 2505.22617, section 5).

    delta = l - l_old, r = exp(delta)                 (unclamped, as in the reference)
    L_t = -A r                                        every valid token: no clipping at all
    L_t = -A r + kappa |delta|                        the top k = max(1, floor(ratio * N_valid)) tokens by cov_t

cov_t = (A_t - mean A)(l_t - mean l) over the micro-batch's valid tokens (covariance.py); top-k is
deterministic (`torch.topk`; ties are implementation-defined, section 17.2).
Reference: verl 0.9.1 `compute_policy_loss_kl_cov` (algorithms.md section 2.9). Defaults are verl's
(`kl_cov_ratio` 2e-4, `ppo_kl_coef` kappa 0.1). The original `PRIME-RL/Entropy-Mechanism-of-RL` scripts use
kappa = 1 and give the ratio in percent (`k_percent` 0.2 = 2e-3 for 7B, 0.02 = 2e-4 for 32B): set both
explicitly when reproducing.
token_stat_scope: `micro_batch` (default) is the reference (means, N_valid and the top-k per micro-batch). With
`mini_batch` / `global`, `prepare` takes the means and the k-th largest cov over the whole scope (k from the
scope's N_valid; `token_scope.kth_largest`, which all-reduces scalars only) and each micro-batch penalises its
tokens with cov >= that threshold. A threshold keeps every token tied with the k-th value (section 17.2).
Metrics: `ppo_kl` = mean(l_old - l); `kl_cov/abs_kl` = mean |delta| (verl logs this one as `ppo_kl`);
`kl_cov/selected_frac`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.covariance import CovMeans, covariance_means, token_covariance
from creditrl.algorithms.registry import POLICY_LOSSES
from creditrl.algorithms.token_scope import AllReduce, ScopedPart, ScopedStats, kth_largest, local_all_reduce


@dataclass(frozen=True)
class KLCovScopeStats:
    """Scope statistics for `token_stat_scope` mini_batch / global."""

    means: CovMeans
    threshold: float  # k-th largest cov over the scope's valid tokens (inf when there are none)


def kl_cov_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 0.1,
    scope_stats: KLCovScopeStats | None = None,
) -> tuple[Tensor, Metrics]:
    """Per-token KL-Cov loss [B, T] and its metrics. All inputs [B, T].

    `scope_stats` None: the micro-batch's top-k (reference, `torch.topk`). Else: the scope's means and threshold.
    """
    delta = logprobs - old_logprobs
    loss = -advantages * torch.exp(delta)
    valid = mask > 0
    if scope_stats is None:
        selected = torch.zeros_like(valid)
        n_valid = int(valid.sum())
        if n_valid > 0:
            cov = token_covariance(logprobs, advantages, mask)[valid]  # [N_valid]
            k = max(1, int(n_valid * kl_cov_ratio))
            flat_valid = torch.nonzero(valid.reshape(-1)).squeeze(-1)  # [N_valid]
            selected.view(-1)[flat_valid[torch.topk(cov, k).indices]] = True
    else:
        cov = token_covariance(logprobs, advantages, mask, scope_stats.means)
        selected = valid & (cov >= scope_stats.threshold)
    loss = torch.where(selected, loss + ppo_kl_coef * delta.abs(), loss)
    metrics: Metrics = {
        "ppo_kl": masked_mean(-delta, mask).detach(),
        "kl_cov/abs_kl": masked_mean(delta.abs(), mask).detach(),
        "kl_cov/selected_frac": masked_mean(selected.float(), mask).detach(),
    }
    return loss * mask, metrics


@torch.no_grad()
def kl_cov_scope_stats(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, kl_cov_ratio: float, all_reduce: AllReduce = local_all_reduce
) -> KLCovScopeStats:
    """Means and the k-th largest cov over the whole scope (all ranks)."""
    means = covariance_means(logprobs, advantages, mask, all_reduce)
    if means.n_valid == 0:
        return KLCovScopeStats(means, float("inf"))
    cov = token_covariance(logprobs, advantages, mask, means)[mask > 0]
    k = max(1, int(means.n_valid * kl_cov_ratio))
    return KLCovScopeStats(means, kth_largest(cov, k, all_reduce))


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
class KLCov(ScopedPart):
    """KL-Cov: unclipped policy gradient with a |log-ratio| penalty on the top-covariance tokens."""

    needs = frozenset()

    def __init__(self, cfg: KLCovConfig):
        self.cfg = cfg
        self._stats = ScopedStats("kl_cov")

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> KLCovScopeStats:
        return kl_cov_scope_stats(inputs.logprobs, inputs.advantages, inputs.mask, self.cfg.kl_cov_ratio, all_reduce)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        stats = None if self.scope == "micro_batch" else self._stats.get(inputs, self._compute_stats)
        return kl_cov_loss(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask,
                           self.cfg.kl_cov_ratio, self.cfg.ppo_kl_coef, stats)
