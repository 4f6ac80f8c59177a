"""Per-token covariance between log-probability and advantage (Cui et al., "The Entropy Mechanism of RL for
Reasoning LMs", arXiv 2505.22617), the statistic Clip-Cov and KL-Cov select tokens by.

    cov_t = (A_t - mean(A)) (l_t - mean(l))        means over the valid tokens of the token_stat_scope

Tokens with a large positive cov are the ones whose update drives the entropy down the most. Detached: the
selection never carries a gradient. The reference codes take the means over the micro-batch
(`token_stat_scope: micro_batch`, the default); with `mini_batch` / `global` they come from `covariance_means`
over the whole scope (algorithms.md section 17.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.token_scope import AllReduce, local_all_reduce, scope_count, scope_sum


@dataclass(frozen=True)
class CovMeans:
    """Means of A and l over the valid tokens of a scope, and how many valid tokens it has."""

    adv: float
    logp: float
    n_valid: int


@torch.no_grad()
def covariance_means(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, all_reduce: AllReduce = local_all_reduce
) -> CovMeans:
    """mean(A), mean(l) and the valid-token count over the scope (all ranks through `all_reduce`)."""
    n = scope_count(mask, all_reduce)
    denom = max(n, 1)
    return CovMeans(
        adv=scope_sum(advantages, mask, all_reduce).item() / denom,
        logp=scope_sum(logprobs.detach(), mask, all_reduce).item() / denom,
        n_valid=n,
    )


@torch.no_grad()
def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor, means: CovMeans | None = None) -> Tensor:
    """cov_t [B, T] of the current log-probs and the advantages; 0 on padding. `means` default: this batch's."""
    means = means or covariance_means(logprobs, advantages, mask)
    cov = (advantages - means.adv) * (logprobs.detach() - means.logp)
    return torch.where(mask > 0, cov, torch.zeros_like(cov))
