"""DAPO dynamic sampling: drop prompt groups whose rewards have zero variance (Yu et al., arXiv 2503.14476).

A group whose responses all got the same reward has advantage 0 under GRPO-style estimators and only dilutes the
batch. DAPO keeps a group iff its rewards are not all equal (population std > 0) or it has a single response,
then refills the batch with new generation rounds until enough groups survive (the refill loop lives in the
trainer). Reference: `verl-recipe/dapo/dapo_ray_trainer.py` (`algorithm.filter_groups`, `np.std` ddof 0;
algorithms.md section 7). "Not all equal" is tested exactly (max != min), which is std > 0 without the rounding
noise of a float std.
"""

from __future__ import annotations

import torch
from torch import Tensor

from creditrl.algorithms.groups import group_min_max, group_sizes


def dynamic_sampling_keep_mask(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Keep-mask [B] bool of the responses whose group has non-zero reward variance (or one response).

    `rewards` [B] is the filter metric (DAPO: accuracy or the sequence reward), `group_ids` [B] the prompt groups.
    Metrics: `dynamic_sampling/groups`, `/kept_groups`, `/kept_frac`, `/all_max_frac` (dropped groups whose
    common reward is the batch's maximum, e.g. all correct), `/all_min_frac` (e.g. all wrong).
    """
    lo, hi = group_min_max(rewards, group_ids)  # [B], [B]
    keep = (hi > lo) | (group_sizes(group_ids) == 1)  # [B]
    _, first = _first_rows(group_ids)
    n_groups = len(first)
    kept = int(keep[first].sum())
    dropped = first[~keep[first]]
    r = rewards.to(torch.float64)
    metrics = {
        "dynamic_sampling/groups": float(n_groups),
        "dynamic_sampling/kept_groups": float(kept),
        "dynamic_sampling/kept_frac": kept / max(n_groups, 1),
        "dynamic_sampling/all_max_frac": float((r[dropped] == r.max()).sum()) / max(n_groups, 1) if len(r) else 0.0,
        "dynamic_sampling/all_min_frac": float((r[dropped] == r.min()).sum()) / max(n_groups, 1) if len(r) else 0.0,
    }
    return keep, metrics


def _first_rows(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(unique group ids, the first row of each group)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    first = torch.full((len(uniq),), len(group_ids), dtype=torch.long)
    first = first.scatter_reduce_(0, inverse, torch.arange(len(group_ids)), "amin")
    return uniq, first
