"""DCPO smooth advantage standardisation (SAS) across training steps (Yang et al., arXiv 2509.02333, section 4.2).

State per prompt (keyed by `AdvantageInputs.prompt_keys`, stable across steps): `(k, mu_old, sigma_old)`, where k
is the number of earlier steps in which the prompt was trained. At step i = k + 1, with the group rewards
R_1..R_G of this step (G >= 2):

    mu_new, sigma_new = mean(R), std(R)                                  (unbiased std)
    k = 0:  mu, sigma = mu_new, sigma_new
    k > 0:  mu = (k mu_old + mu_new) / (k + 1)
            sigma^2 = [k sigma_old^2 + sigma_new^2 + k/(k+1) (mu_new - mu_old)^2] / (k + 1)
    A_new   = (R_j - mu_new) / sigma_new   (0 if sigma_new = 0)
    A_total = (R_j - mu) / sigma           (0 if sigma = 0)          no epsilon (unlike GRPO's + 1e-6)
    SA_new   = k/(k+1) A_new + 1/(k+1) A_total
    SA_total = 1/(k+1) A_new + k/(k+1) A_total
    A_j = SA_new if |SA_new| < |SA_total| else SA_total                 (ties go to SA_total)

then broadcast over the tokens, multiplied by the mask, and the state becomes (k + 1, mu, sigma). With
`norm_by_std: false` A_new and A_total are plain differences R_j - mu. A group whose rewards are all equal still
gets A = A_total / (k + 1) != 0 at a later visit: the paper's "no dead zone".

Reference code `lime-RL/DCPO@01787b0f` `compute_dcpo_outcome_advantage` / `get_mean_std`. Paper vs code
(algorithms-token-level.md section 10.7 (1)): the released scripts never enable SAS (`use_old_mean.enable` is
False, so k = 0 every step and SAS reduces to GRPO with an unbiased std, no epsilon and A = 0 when sigma = 0).
Follow: paper, so `enabled: true` is the default; `enabled: false` reproduces the released scripts exactly.
The reference's `user_old_mean_ratio` knob (1.0 in every script) is not offered.

Groups of one response raise (the reference raises too: a group std needs two samples). A prompt that appears in
several groups of one batch is updated group by group, in order of first appearance. The state is plain JSON
(`{"stats": {prompt_key: [k, mu, sigma]}}`) and goes into checkpoints through `Algorithm.state_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, Metrics
from creditrl.algorithms.registry import ADVANTAGES


@dataclass(frozen=True)
class PromptStats:
    """Running reward statistics of one prompt over the steps it was trained in."""

    count: int  # k: steps seen so far
    mean: float
    std: float


def pooled_stats(old: PromptStats, new_mean: float, new_std: float) -> PromptStats:
    """Cumulative (mu, sigma) after one more step with group statistics (new_mean, new_std)."""
    k = old.count
    if k == 0:
        return PromptStats(1, new_mean, new_std)
    mean = (k * old.mean + new_mean) / (k + 1)
    var = (k * old.std**2 + new_std**2 + k / (k + 1) * (new_mean - old.mean) ** 2) / (k + 1)
    return PromptStats(k + 1, mean, math.sqrt(var))


def _standardise(r: Tensor, mean: float, std: float, norm_by_std: bool) -> Tensor:
    if not norm_by_std:
        return r - mean
    return (r - mean) / std if std > 0 else torch.zeros_like(r)


def sas_group_advantages(
    rewards: Tensor, old: PromptStats, norm_by_std: bool = True
) -> tuple[Tensor, PromptStats, Tensor]:
    """SAS advantages [G] of one group with rewards [G] and the prompt's stats before this step.

    Returns (advantages [G] float64, the updated stats, chose_new [G] bool: SA_new was picked).
    """
    if rewards.numel() < 2:
        raise ValueError("DCPO SAS needs at least 2 responses per prompt (rollout.n_samples >= 2)")
    r = rewards.to(torch.float64)
    new_mean, new_std = r.mean().item(), r.std().item()
    stats = pooled_stats(old, new_mean, new_std)
    k = old.count
    a_new = _standardise(r, new_mean, new_std, norm_by_std)
    a_total = _standardise(r, stats.mean, stats.std, norm_by_std)
    sa_new = k / (k + 1) * a_new + 1 / (k + 1) * a_total
    sa_total = 1 / (k + 1) * a_new + k / (k + 1) * a_total
    chose_new = sa_new.abs() < sa_total.abs()
    return torch.where(chose_new, sa_new, sa_total), stats, chose_new


@dataclass
class DCPOSASConfig:
    enabled: bool = True  # false = the released DCPO scripts (k = 0 every step: GRPO with unbiased std, no eps)
    norm_by_std: bool = True  # divide A_new / A_total by their std; false = plain differences R_j - mu


@ADVANTAGES.register("dcpo_sas", DCPOSASConfig)
class DCPOSASAdvantage:
    """DCPO smooth advantage standardisation: per-prompt reward statistics pooled across steps (stateful)."""

    needs = frozenset()

    def __init__(self, cfg: DCPOSASConfig):
        self.cfg = cfg
        self.stats: dict[str, PromptStats] = {}

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        if len(inputs.prompt_keys) != len(inputs.rewards):
            raise ValueError(
                f"dcpo_sas needs one prompt key per response (got {len(inputs.prompt_keys)} keys for "
                f"{len(inputs.rewards)} responses)"
            )
        adv = torch.zeros(len(inputs.rewards), dtype=torch.float64)
        chose_new = torch.zeros(len(inputs.rewards), dtype=torch.bool)
        counts, zero_std = [], 0
        for gid in _in_order_of_appearance(inputs.group_ids):
            rows = torch.nonzero(inputs.group_ids == gid).squeeze(-1)
            key = _group_key(inputs.prompt_keys, rows)
            old = self.stats.get(key, PromptStats(0, 0.0, 0.0)) if self.cfg.enabled else PromptStats(0, 0.0, 0.0)
            adv[rows], new, chose_new[rows] = sas_group_advantages(inputs.rewards[rows], old, self.cfg.norm_by_std)
            if self.cfg.enabled:
                self.stats[key] = new
            counts.append(old.count)
            zero_std += int(inputs.rewards[rows].to(torch.float64).std().item() == 0.0)
        n_groups = max(len(counts), 1)
        metrics: Metrics = {
            "adv/sas_prev_visits_mean": sum(counts) / n_groups,
            "adv/sas_revisited_frac": sum(c > 0 for c in counts) / n_groups,
            "adv/sas_chose_new_frac": chose_new.float().mean().item() if len(chose_new) else 0.0,
            "adv/zero_std_frac": zero_std / n_groups,
            "adv/sas_prompts_tracked": float(len(self.stats)),
        }
        return adv.unsqueeze(-1).to(inputs.mask.dtype) * inputs.mask, metrics

    def state_dict(self) -> dict:
        return {"stats": {key: [s.count, s.mean, s.std] for key, s in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.stats = {key: PromptStats(int(c), float(m), float(s)) for key, (c, m, s) in state.get("stats", {}).items()}


def _in_order_of_appearance(group_ids: Tensor) -> list[int]:
    seen: dict[int, None] = {}
    for g in group_ids.tolist():
        seen.setdefault(g, None)
    return list(seen)


def _group_key(prompt_keys: list[str], rows: Tensor) -> str:
    keys = {prompt_keys[i] for i in rows.tolist()}
    if len(keys) != 1:
        raise ValueError(f"responses of one group must share one prompt key, got {sorted(keys)}")
    return keys.pop()
