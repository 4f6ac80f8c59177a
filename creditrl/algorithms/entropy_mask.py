"""80/20 high-entropy ("forking") tokens: train only on the top-rho tokens by current-policy entropy.

Paper: Wang et al., "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning
for LLM Reasoning", arXiv 2506.01939 (NeurIPS 2025). Reference code: `Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR`
(>= 137d8d1e), `get_global_entropy_top_mask`. Spec: algorithms-token-level.md §14.

Over the N valid tokens of the scope, with H_t the current policy's entropy (detached):

    k = max(1, int(N * rho + 0.9999))                 (the reference's approximate ceil)
    M_t = 1 for the k highest-entropy tokens, else 0

The part returns weights 1 and the new aggregation mask m * M: tokens outside the selection leave both the loss
and the denominator, so under token-mean each selected token's gradient is about 1/rho times larger than under
full-token training (the reference behaviour). The threshold follows `token_stat_scope` (reference: per
micro-batch); ties at the k-th value are all kept (see `token_scope`).

Differences: TRL's `top_entropy_quantile` is a different estimator (global quantile, full denominator); this part
follows the 80/20 code. In creditrl the new mask also applies to the regularisers composed after this part
(entropy bonus, KL loss); in the reference they would keep the full mask (both are off in its scripts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import TOKEN_WEIGHTS
from creditrl.algorithms.token_scope import (
    AllReduce, ScopedPart, ScopedStats, kth_largest, local_all_reduce, scope_count,
)


def top_ratio_count(num_tokens: int, ratio: float) -> int:
    """k = max(1, int(N * rho + 0.9999)), the reference's count of selected tokens (0 when N = 0)."""
    if num_tokens == 0:
        return 0
    return max(1, int(num_tokens * ratio + 0.9999))


def entropy_threshold(entropy: Tensor, mask: Tensor, ratio: float, all_reduce: AllReduce = local_all_reduce
                      ) -> float | None:
    """The k-th largest entropy over the valid tokens of the scope (None when there are none)."""
    n = scope_count(mask, all_reduce)
    if n == 0:
        return None
    values = entropy.detach()[mask.ne(0)]
    return kth_largest(values, top_ratio_count(n, ratio), all_reduce)


def high_entropy_mask(entropy: Tensor, mask: Tensor, threshold: float | None) -> Tensor:
    """New mask [B, T]: valid tokens whose entropy is >= the threshold."""
    if threshold is None:
        return torch.zeros_like(mask)
    return mask * (entropy.detach() >= threshold).to(mask.dtype)


@dataclass
class HighEntropyMaskConfig:
    ratio: float = 0.2  # rho, `entropy_top_ratio`

    def __post_init__(self):
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"high_entropy_mask.ratio must be in (0, 1], got {self.ratio}")


@TOKEN_WEIGHTS.register("high_entropy_mask", HighEntropyMaskConfig)
class HighEntropyMask(ScopedPart):
    """80/20: keep only the top-rho tokens by current-policy entropy (arXiv 2506.01939)."""

    needs = frozenset({"entropy"})

    def __init__(self, cfg: HighEntropyMaskConfig):
        self.cfg = cfg
        self._stats = ScopedStats("high_entropy_mask")

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> float | None:
        if inputs.entropy is None:
            raise ValueError("high_entropy_mask needs the policy entropy, but it was not computed")
        return entropy_threshold(inputs.entropy, inputs.mask, self.cfg.ratio, all_reduce)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        threshold = self._stats.get(inputs, self._compute_stats)
        new_mask = high_entropy_mask(inputs.entropy, inputs.mask, threshold)
        m = inputs.mask
        metrics: Metrics = {
            "entropy_mask/kept_frac": masked_mean(new_mask, m).item(),
            "entropy_mask/threshold": threshold if threshold is not None else 0.0,
            "entropy_mask/kept_entropy_mean": masked_mean(inputs.entropy.detach(), new_mask).item(),
        }
        return torch.ones_like(inputs.mask, dtype=inputs.logprobs.dtype), new_mask, metrics
