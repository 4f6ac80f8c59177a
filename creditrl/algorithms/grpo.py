"""GRPO group-relative advantages, Dr.GRPO (no std normalisation), batch-level std scaling, and the
multi-reward normalise-then-sum (GDPO) aggregation.

    A_i = (R_i - mean_g(R)) / (std_g(R) + eps)      std unbiased (N-1); eps = 1e-6 as in verl
    A_i =  R_i - mean_g(R)                          Dr.GRPO, `norm_by_std: false` (arXiv 2503.20783)
    A_i = (R_i - mean_g(R)) / (std_B(R) + eps)      `std_scope: batch`: std over the whole step batch (unbiased),
                                                    the mean stays per group (TRL `scale_rewards="batch"`)

`multi_objective: normalize_then_sum` (TRL `multi_objective_aggregation="normalize_then_sum"`, GDPO): with the
unweighted reward of each reward function R_ik (k = 1..K, `AdvantageInputs.reward_components`) and the recipe's
weights w_k (`AdvantageInputs.reward_weights`):

    z_ik = (R_ik - mean_g(R_k)) / (std_g(R_k) + eps)     per function, per group (unbiased std)
    S_i  = sum_k w_k z_ik
    A_i  = (S_i - mean_B(S)) / (std_B(S) + eps)          over the whole step batch (unbiased std)

The default `sum_then_normalize` uses R_i = sum_k w_k R_ik (`AdvantageInputs.rewards`) as above. TRL's eps is
1e-4 in every one of these (set `eps: 1.0e-4` to match TRL); TRL has no singleton groups in training.

A group is the set of responses to one prompt. A singleton group gets mean 0 and std 1 (verl `grpo`), so its
advantage is its reward. The scalar is broadcast over the response tokens and multiplied by the mask.
GRPO: DeepSeekMath, arXiv 2402.03300. References: verl 0.9.1 `compute_grpo_outcome_advantage`; TRL 1.16
`GRPOTrainer._generate_and_score_completions` (algorithms.md section 1.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, Metrics, stateless
from creditrl.algorithms.registry import ADVANTAGES


def group_mean_std(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element mean and unbiased std of its group. Singleton groups get (0, 1).  -> ([B], [B])"""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    v = values.to(torch.float64)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, v)
    means = sums / counts
    sq = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, (v - means[inverse]) ** 2)
    stds = torch.sqrt(sq / (counts - 1).clamp_min(1))
    single = counts == 1
    means = torch.where(single, torch.zeros_like(means), means)
    stds = torch.where(single, torch.ones_like(stds), stds)
    return means[inverse].to(values.dtype), stds[inverse].to(values.dtype)


def batch_std(values: Tensor) -> Tensor:
    """Unbiased std of all of `values` [B] (0 for a single value), in float64.  -> scalar"""
    v = values.to(torch.float64)
    if v.numel() < 2:
        return torch.zeros((), dtype=torch.float64)
    return v.std(unbiased=True)


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, mask: Tensor, norm_by_std: bool = True, eps: float = 1e-6,
    std_scope: str = "group",
) -> Tensor:
    """GRPO advantages [B, T] from sequence rewards [B], group ids [B] and the response mask [B, T].

    `std_scope`: "group" divides by each group's std, "batch" by the std of the whole batch (TRL
    `scale_rewards="batch"`); ignored with `norm_by_std=False`."""
    mean, std = group_mean_std(rewards, group_ids)
    adv = rewards - mean
    if norm_by_std:
        if std_scope == "batch":
            std = batch_std(rewards).to(adv.dtype)
        elif std_scope != "group":
            raise ValueError(f"unknown std_scope '{std_scope}'; choose group or batch")
        adv = adv / (std + eps)
    return adv.unsqueeze(-1).to(mask.dtype) * mask


def normalize_then_sum_advantages(
    components: Tensor, weights: Tensor, group_ids: Tensor, mask: Tensor, eps: float = 1e-6
) -> Tensor:
    """Normalise-then-sum advantages [B, T] from per-function rewards [B, K] (unweighted), weights [K], group ids
    [B] and the mask [B, T] (see the module docstring)."""
    comps = components.to(torch.float64)
    if comps.dim() != 2 or weights.numel() != comps.shape[1]:
        raise ValueError(f"normalize_then_sum needs reward components [B, K] and K weights, got "
                         f"{tuple(comps.shape)} and {weights.numel()} weights")
    z = torch.empty_like(comps)
    for k in range(comps.shape[1]):
        mean, std = group_mean_std(comps[:, k], group_ids)
        z[:, k] = (comps[:, k] - mean) / (std + eps)
    total = (z * weights.to(torch.float64)).sum(-1)  # [B]
    adv = (total - total.mean()) / (batch_std(total) + eps)
    return adv.unsqueeze(-1).to(mask.dtype) * mask


@dataclass
class GRPOConfig:
    norm_by_std: bool = True  # false = Dr.GRPO (TRL scale_rewards="none")
    eps: float = 1e-6  # verl; TRL uses 1e-4
    std_scope: Literal["group", "batch"] = "group"  # batch = TRL scale_rewards="batch"
    # how several reward functions combine: sum_then_normalize (weighted sum, then norm_by_std / std_scope) or
    # normalize_then_sum (GDPO/TRL: standardise each function per group, weighted sum, then standardise over batch)
    multi_objective: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"

    def __post_init__(self):
        if self.eps < 0:
            raise ValueError(f"grpo.eps must be >= 0 (got {self.eps})")
        if self.std_scope not in ("group", "batch"):
            raise ValueError(f"grpo.std_scope must be group or batch (got {self.std_scope!r})")
        if self.multi_objective not in ("sum_then_normalize", "normalize_then_sum"):
            raise ValueError(f"grpo.multi_objective must be sum_then_normalize or normalize_then_sum "
                             f"(got {self.multi_objective!r})")
        if not self.norm_by_std and self.std_scope == "batch":
            raise ValueError("grpo.std_scope: batch chooses the std that divides the advantage, but "
                             "grpo.norm_by_std is false (no std division): remove std_scope or set norm_by_std: true")
        if self.multi_objective == "normalize_then_sum" and (not self.norm_by_std or self.std_scope != "group"):
            raise ValueError(
                f"grpo.multi_objective: normalize_then_sum always standardises each reward function per group and "
                f"the weighted sum over the batch (TRL ignores scale_rewards there), but norm_by_std is "
                f"{str(self.norm_by_std).lower()} and std_scope is {self.std_scope}: remove norm_by_std / std_scope")


@ADVANTAGES.register("grpo", GRPOConfig)
@stateless
class GRPOAdvantage:
    """GRPO group-normalised advantage (Dr.GRPO with norm_by_std: false)."""

    needs = frozenset()

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        if c.multi_objective == "normalize_then_sum":
            if inputs.reward_components is None or inputs.reward_weights is None:
                raise ValueError("grpo.multi_objective: normalize_then_sum needs the per-function rewards "
                                 "(AdvantageInputs.reward_components and reward_weights), which this trainer did "
                                 "not pass: use multi_objective: sum_then_normalize")
            adv = normalize_then_sum_advantages(inputs.reward_components, inputs.reward_weights, inputs.group_ids,
                                                inputs.mask, c.eps)
        else:
            adv = grpo_advantages(inputs.rewards, inputs.group_ids, inputs.mask, c.norm_by_std, c.eps, c.std_scope)
        _, std = group_mean_std(inputs.rewards, inputs.group_ids)
        zero_var = (std == 0).float().mean().item()
        return adv, {"adv/zero_std_frac": zero_var}
