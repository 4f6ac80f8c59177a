"""HAPO's normalised token entropy h_hat in [-1, 1], shared by its clipping and advantage-redistribution parts.

Paper: Liu et al., "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
arXiv 2509.16591. Reference code: `starriver030515/HAPO` @ 7671dde3, `compute_entropy_h`. Spec:
algorithms-token-level.md §13.1.

Over the N valid tokens of the scope, with H_t the current policy's entropy (detached):

    e_t = ln(max(H_t, 1e-8))
    mu  = the `entropy_pivot` quantile of {e_t}, "nearest": sorted(e)[round(q (N - 1))] (round half to even)
    s   = sqrt(max(mean_t (e_t - mu)^2, 1e-8))           RMS about the pivot, not the std about the mean
    h_t = (e_t - mu) / s
    P   = max(max_{h > 0} h, 1e-8),   Nn = min(min_{h < 0} h, -1e-8)

    h_hat_t = h_t / P        if h_t > 0
            = h_t / Nn       if h_t <= 0     hhat_sign "code": the released code; below-pivot tokens get h_hat >= 0
            = h_t / |Nn|     if h_t <= 0     hhat_sign "signed": the sign-preserving reading, h_hat in [-1, 1]

The sign question (§13.1) is unresolved in the paper/code. Default `code`, because the reference code produced
the published numbers (spec §0.1 default rule: parity unless a section says "Follow: paper"); `signed` is the
reading that matches the paper's text and the `h_hat <= 0` branches of the clipping and redistribution rules.
The statistics (mu, s, P, Nn) follow `token_stat_scope` (reference: per micro-batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.token_scope import (
    AllReduce, kth_smallest, local_all_reduce, scope_count, scope_max, scope_min, scope_sum,
)

HhatSign = Literal["code", "signed"]


@dataclass
class EntropyNormStats:
    """Pivot mu, RMS scale s, largest positive h (P) and smallest negative h (Nn) over the scope."""

    pivot: float
    scale: float
    pos_max: float
    neg_min: float


def log_entropy(entropy: Tensor) -> Tensor:
    """e_t = ln(max(H_t, 1e-8)), float64, detached.  [B, T]"""
    return torch.log(entropy.detach().double().clamp_min(1e-8))


def nearest_quantile_rank(quantile: float, num_tokens: int) -> int:
    """0-based index into the ascending sort: round(q (N - 1)), Python's round half to even (as the reference)."""
    return int(round(quantile * (num_tokens - 1)))


def entropy_norm_stats(
    entropy: Tensor, mask: Tensor, pivot_quantile: float = 0.8, all_reduce: AllReduce = local_all_reduce
) -> EntropyNormStats | None:
    """(mu, s, P, Nn) of the valid tokens of the scope; None when the scope has no valid token."""
    n = scope_count(mask, all_reduce)
    if n == 0:
        return None
    e = log_entropy(entropy)
    valid = mask.ne(0)
    pivot = kth_smallest(e[valid], nearest_quantile_rank(pivot_quantile, n) + 1, all_reduce)
    mean_sq = scope_sum((e - pivot) ** 2, mask, all_reduce).item() / n
    scale = math.sqrt(max(mean_sq, 1e-8))
    h = (e - pivot) / scale
    pos_max = max(scope_max(h, valid & (h > 0), all_reduce).item(), 1e-8)
    neg_min = min(scope_min(h, valid & (h < 0), all_reduce).item(), -1e-8)
    return EntropyNormStats(pivot, scale, pos_max, neg_min)


def normalized_entropy(entropy: Tensor, mask: Tensor, stats: EntropyNormStats | None, sign: str = "code") -> Tensor:
    """h_hat [B, T] (float64, 0 on padding) from the scope statistics; see the module docstring."""
    if sign not in ("code", "signed"):
        raise ValueError(f"unknown hhat_sign '{sign}'; use code or signed")
    if stats is None:
        return torch.zeros_like(entropy, dtype=torch.float64)
    h = (log_entropy(entropy) - stats.pivot) / stats.scale
    below = stats.neg_min if sign == "code" else abs(stats.neg_min)
    hhat = torch.where(h > 0, h / stats.pos_max, h / below)
    return hhat * mask.ne(0)


def validate_hapo_entropy_options(pivot: float, sign: str, part: str) -> None:
    """Config checks shared by the HAPO parts; `part` names the YAML block in the message."""
    if not 0.0 <= pivot <= 1.0:
        raise ValueError(f"{part}.entropy_pivot is a quantile and must be in [0, 1], got {pivot}")
    if sign not in ("code", "signed"):
        raise ValueError(f"{part}.hhat_sign must be 'code' or 'signed', got '{sign}'")
