"""Per-token covariance between log-probability and advantage (Cui et al., "The Entropy Mechanism of RL for
Reasoning LMs", arXiv 2505.22617), the statistic Clip-Cov and KL-Cov select tokens by.

    cov_t = (A_t - mean_m(A)) (l_t - mean_m(l))        means over the valid tokens of the micro-batch

Tokens with a large positive cov are the ones whose update drives the entropy down the most. Detached: the
selection never carries a gradient. The means are taken over the micro-batch, as in the reference code
(algorithms.md section 17.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from creditrl.algorithms.base import masked_mean


@torch.no_grad()
def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """cov_t [B, T] of the current log-probs and the advantages over the valid tokens; 0 on padding."""
    lp = logprobs.detach()
    cov = (advantages - masked_mean(advantages, mask)) * (lp - masked_mean(lp, mask))
    return cov * mask
