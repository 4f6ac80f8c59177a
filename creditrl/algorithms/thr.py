"""THR: token hidden reward reweighting, steering GRPO toward exploitation (p > 0) or exploration (p < 0).

Paper: Deng, Ren, Li, Gong, Sutherland, Li, Thrampoulidis, "Token Hidden Reward: Steering Exploration-Exploitation
in Group Relative Deep Reinforcement Learning", arXiv 2510.03669 (v4, ICLR 2026). No public reference code.
Spec: algorithms-token-level.md §11.1 and §11.3 ([RECON], UNVERIFIED). Scores: `hidden_reward.py`.

What was read (the stored public copies): the v3/v4 abstract, the four ICLR 2026 reviews, the NTHR paper body
(NeurIPS 2025; its displayed equations were not decoded in the stored text) and a third-party NTHR
implementation note that matches spec §11.2. The THR paper body (§3-4, Algorithm 1) could NOT be retrieved: only
the first screen of arxiv.org/html/2510.03669v3/v4 is stored. So this module implements the spec's [RECON] form,
checked against everything the abstract and the reviews state:

    s_t   = g_t^T M+ h_t                                    NTHR's score, for every token of a mixed group
    THR_t = A_t * s_t                                        [RECON] the token's first-order contribution to
                                                             d/dt sum_{i in P} ln pi(y_i) under the NTHR dynamics
    dominant tokens: |s_t| > tau,  tau = beta * min_{i in P} mean_{t in i} s_t   (the NTHR anchor, beta = 1)
    A'_t  = A_t (1 + p sign(THR_t))    on dominant tokens
          = A_t  (or 0 with only_dominant: "THR-only" training)   on the others

`direction: exploit` uses p = +strength (amplify positive-THR tokens, weaken negative ones: greedy / Pass@1),
`direction: explore` uses p = -strength (the reverse: Pass@K). Consistent with the abstract and reviews:
positive THR = tokens that raise the likelihood of correct responses (reinforced tokens of correct responses),
negative THR = penalised tokens of incorrect responses that resemble correct ones (the tokens NTHR protects);
"a small subset of tokens with large |THR| dominates"; "THR-only masks out low-|THR| tokens with the NTHR
threshold" and performs like GRPO; the best p is model-dependent.

Still UNVERIFIED: (1) whether THR carries GRPO's group weights (1 - rho)/sqrt(rho(1 - rho)), rho/sqrt(rho(1 - rho))
(NTHR Lemma 4.2) or 1/|y| normalisers: here the advantage A_t already carries the group normalisation;
(2) whether the threshold compares |THR| or the unsigned score: here |s| against the NTHR tau, i.e. |THR| against
|A_j| tau in score units of each response; (3) whether the weight uses the magnitude of THR or only its sign:
here the sign; (4) the range and defaults of p: here strength in [0, 1] (weights stay >= 0, so the part is an
exact token weight of every positively homogeneous clipped loss), default 0.5 (ours; no paper value was read).
Groups without both signs of advantage (not mixed) keep A. The group statistics follow `token_stat_scope` as in
`nthr.py` (use `mini_batch` for whole groups). Needs the extras "old_hidden", "lm_head_weight", "response_ids",
"temperature". Logged: thr/value_mean, thr/value_abs_mean, thr/dominant_frac, thr/positive_frac, ...
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


def thr_values(scores: Tensor, advantages: Tensor, scored: Tensor) -> Tensor:
    """THR_t = A_t s_t on scored tokens, 0 elsewhere.  [B, T]"""
    return torch.where(scored, advantages.to(scores.dtype) * scores, torch.zeros_like(scores))


# |s| within TIE_RTOL * |tau| of tau is a tie, resolved as in exact arithmetic (not dominant). The token of a
# one-token positive response that sets tau has s = tau exactly; in fp32 its recomputed score lands a few ulps
# (~3e-6 relative measured) either side of tau depending on how many rows share the micro-batch (BLAS blocking), so
# a bare `>` made its weight depend on micro_batch_tokens_per_worker and the number of learner ranks.
TIE_RTOL = 1e-4


def thr_weights(
    thr: Tensor, scores: Tensor, tau: Tensor, scored: Tensor, p: float, only_dominant: bool = False
) -> tuple[Tensor, Tensor]:
    """(weights [B, T], dominant [B, T] bool): 1 + p sign(THR) on dominant tokens (|s| > tau), 1 (or 0) elsewhere."""
    dominant = scored & (scores.abs() > tau + TIE_RTOL * tau.abs())
    other = torch.zeros_like(thr) if only_dominant else torch.ones_like(thr)
    other = torch.where(scored, other, torch.ones_like(thr))  # tokens of non-mixed groups keep A
    return torch.where(dominant, 1.0 + p * torch.sign(thr), other), dominant


@dataclass
class THRConfig:
    direction: Literal["exploit", "explore"] = "exploit"  # exploit: p = +strength; explore: p = -strength
    strength: float = 0.5  # |p| in [0, 1]
    beta: float = 1.0  # tau = beta * min positive anchor (NTHR)
    only_dominant: bool = False  # "THR-only": zero the advantage of non-dominant tokens

    def __post_init__(self):
        if self.direction not in ("exploit", "explore"):
            raise ValueError(f"thr.direction must be 'exploit' or 'explore', got '{self.direction}'")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"thr.strength (|p|) must be in [0, 1] so that token weights stay >= 0, got "
                             f"{self.strength}")

    @property
    def p(self) -> float:
        return self.strength if self.direction == "exploit" else -self.strength


@TOKEN_WEIGHTS.register("thr", THRConfig)
class THRWeight(ScopedPart):
    """THR token hidden reward reweighting (arXiv 2510.03669; [RECON], see the module docstring)."""

    needs = frozenset({"old_hidden", "response_ids"})

    def __init__(self, cfg: THRConfig):
        self.cfg = cfg
        self._stats = ScopedStats("thr")

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> dict[int, GroupHiddenReward]:
        return scope_group_rewards(inputs, self.cfg.beta, "thr")  # per group: a group lives on one rank

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        groups = self._stats.get(inputs, self._compute_stats)
        tok = score_loss_inputs(inputs, groups, "thr")
        thr = thr_values(tok.scores, inputs.advantages, tok.scored)
        w, dominant = thr_weights(thr, tok.scores, tok.tau, tok.scored, self.cfg.p, self.cfg.only_dominant)
        m = inputs.mask
        scored = tok.scored.to(m.dtype)
        dom = dominant.to(m.dtype)
        metrics: Metrics = {
            "thr/value_mean": masked_mean(thr, scored).item(),
            "thr/value_abs_mean": masked_mean(thr.abs(), scored).item(),
            "thr/value_max": thr[tok.scored].max().item() if bool(tok.scored.any()) else 0.0,
            "thr/value_min": thr[tok.scored].min().item() if bool(tok.scored.any()) else 0.0,
            "thr/scored_frac": masked_mean(scored, m).item(),
            "thr/dominant_frac": masked_mean(dom, m).item(),
            "thr/positive_frac": masked_mean((thr > 0).to(m.dtype), dom).item(),
            "thr/weight_mean": masked_mean(w, m).item(),
            "thr/tau_mean": masked_mean(tok.tau, scored).item(),
        }
        return (w * m).to(inputs.logprobs.dtype), None, metrics
