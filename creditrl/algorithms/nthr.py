"""NTHR: weaken the penalty on tokens of incorrect responses that resemble the group's correct responses.

Paper: Deng et al., "On the Effect of Negative Gradient in Group Relative Deep Reinforcement Optimization",
NeurIPS 2025, §5 and App. 7.2-7.4. No public reference code. Spec: algorithms-token-level.md §11.2.
Scores s_t and the anchor tau: `creditrl/algorithms/hidden_reward.py`.

For a mixed group (0 < N+ < G, rho = N+ / G) and a token t of a negative-advantage response:

    s_t > tau  ->  A'_t = eta * A_t,    eta = 2 |0.5 - rho|  (default "balanced"; ablations: rho, 1 - rho)

All other tokens keep A. Since 0 <= eta <= 1 and the clipped losses are positively homogeneous in A, this is the
token weight w_t = eta on selected tokens and 1 elsewhere. The scores use pi_old only, so they are fixed for the
step. The group statistics (M+, tau, rho) follow `token_stat_scope`: a group must be entirely inside the scope
for the paper's semantics; with `micro_batch` a group split across micro-batches is scored against the members
present in each micro-batch (mini-batches always hold whole groups, so `mini_batch` gives the exact rule).
Needs the learner extras "old_hidden", "lm_head_weight", "response_ids" and "temperature".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.hidden_reward import GroupHiddenReward, score_loss_inputs, scope_group_rewards
from creditrl.algorithms.registry import TOKEN_WEIGHTS
from creditrl.algorithms.token_scope import AllReduce, ScopedPart, ScopedStats

EtaRule = Literal["balanced", "success_rate", "failure_rate"]


def nthr_eta(success_rate: Tensor, rule: str = "balanced") -> Tensor:
    """eta from the group success rate rho: 2|0.5 - rho| (balanced), rho, or 1 - rho."""
    if rule == "balanced":
        return 2.0 * (0.5 - success_rate).abs()
    if rule == "success_rate":
        return success_rate
    if rule == "failure_rate":
        return 1.0 - success_rate
    raise ValueError(f"unknown NTHR eta rule '{rule}'; use balanced, success_rate or failure_rate")


def nthr_weights(scores: Tensor, tau: Tensor, eta: Tensor, scored: Tensor, advantages: Tensor) -> tuple[Tensor, Tensor]:
    """(weights [B, T], selected [B, T] bool): eta on negative-advantage tokens with s > tau, 1 elsewhere."""
    selected = scored & (advantages < 0) & (scores > tau)
    return torch.where(selected, eta, torch.ones_like(eta)), selected


@dataclass
class NTHRConfig:
    beta: float = 1.0  # tau = beta * min positive anchor; 0 was used for DeepSeek-1.5B
    # eta from the group success rate rho: balanced 2|0.5 - rho| | success_rate rho | failure_rate 1 - rho
    eta: EtaRule = "balanced"

    def __post_init__(self):
        if self.eta not in ("balanced", "success_rate", "failure_rate"):
            raise ValueError(f"nthr.eta must be balanced, success_rate or failure_rate, got '{self.eta}'")


@TOKEN_WEIGHTS.register("nthr", NTHRConfig)
class NTHRWeight(ScopedPart):
    """NTHR selective token penalisation: eta-scaled advantage on negative tokens similar to correct ones."""

    needs = frozenset({"old_hidden", "response_ids"})

    def __init__(self, cfg: NTHRConfig):
        self.cfg = cfg
        self._stats = ScopedStats("nthr")

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> dict[int, GroupHiddenReward]:
        return scope_group_rewards(inputs, self.cfg.beta, "nthr")  # per group: a group lives on one rank

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        groups = self._stats.get(inputs, self._compute_stats)
        tok = score_loss_inputs(inputs, groups, "nthr")
        eta = nthr_eta(tok.success_rate, self.cfg.eta)
        w, selected = nthr_weights(tok.scores, tok.tau, eta, tok.scored, inputs.advantages)
        m = inputs.mask
        negative = (tok.scored & (inputs.advantages < 0)).to(m.dtype)
        metrics: Metrics = {
            "nthr/selected_frac": masked_mean(selected.to(m.dtype), m).item(),
            "nthr/selected_neg_frac": masked_mean(selected.to(m.dtype), negative).item(),
            "nthr/weight_mean": masked_mean(w, m).item(),
            "nthr/eta_mean": masked_mean(eta, selected.to(m.dtype)).item(),
            "nthr/score_neg_mean": masked_mean(tok.scores, negative).item(),
            "nthr/tau_mean": masked_mean(tok.tau, tok.scored.to(m.dtype)).item(),
        }
        return (w * m).to(inputs.logprobs.dtype), None, metrics
