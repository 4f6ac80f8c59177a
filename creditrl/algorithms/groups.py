"""Per-group reductions over a flat batch of responses (a group = the responses to one prompt).

Every function takes the group id of each response (`group_ids` [B], any integer labels) and broadcasts the
group statistic back to the responses, so callers never build a prompt -> rows table. Reductions run in
float64: rewards are small integers or fractions and group sizes are small, so this costs nothing and keeps
`R_i - mean` exact for all-equal groups.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_sizes(group_ids: Tensor) -> Tensor:
    """Size of each response's group.  [B] long"""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return counts[inverse]


def group_sums(values: Tensor, group_ids: Tensor) -> Tensor:
    """Sum of `values` [B] over each response's group, in float64.  [B]"""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, values.to(torch.float64))
    return sums[inverse]


def group_min_max(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum and maximum of `values` [B] over each response's group.  ([B], [B])"""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    v = values.to(torch.float64)
    lo = torch.full((len(counts),), float("inf"), dtype=torch.float64).scatter_reduce_(0, inverse, v, "amin")
    hi = torch.full((len(counts),), float("-inf"), dtype=torch.float64).scatter_reduce_(0, inverse, v, "amax")
    return lo[inverse], hi[inverse]
