"""Token hidden-reward scores: how much a token's update moves the likelihood of a group's correct responses.

Shared by NTHR (`nthr.py`) and THR (`thr.py`). Papers: Deng et al., "On the Effect of Negative Gradient in Group
Relative Deep Reinforcement Optimization" (NTHR, NeurIPS 2025) §4-5 and App. 7.2-7.4; Deng et al., "Token Hidden
Reward", arXiv 2510.03669 (THR, ICLR 2026). No public reference code. Spec: algorithms-token-level.md §11.

Under the unconstrained-features view (NTHR Assumption 4.3: logits = W h), for the responses of one prompt:

    q_t      = pi_old(. | x, y_<t) restricted to V* (the token ids of the group's responses), NOT renormalised
    g_t      = e_{y_t} - q_t            prediction-error vector on V*          [|V*|]
    h_t      = final hidden state of pi_old that produced token t's distribution  [d]
    M+       = sum over the tokens t of the positive responses of g_t h_t^T   [|V*|, d]
    s_t      = g_t^T M+ h_t = sum_{t' positive} <g_t', g_t> <h_t', h_t>
    anchor   = tau = beta * min over positive responses i of mean_{t in i} s_t

q on V* comes from the old pass without a [T, V] tensor: with raw logits a_v = W_v . h and the old log-prob l_old,
log q_v = (a_v - a_y) / T + l_old (since l_old = a_y / T - lse). "Positive" responses are those with a positive
advantage (for binary rewards in a mixed group: the correct ones). Scores are computed in fp32 (float64 when the
inputs are float64), without gradient, from pi_old quantities only, so they are fixed for the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs

HIDDEN_EXTRAS = ("old_hidden", "lm_head_weight", "response_ids", "temperature")


def vstar_probabilities(
    hidden: Tensor, weight: Tensor, targets: Tensor, old_logprobs: Tensor, vocab: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """pi_old(v) for v in `vocab` (sorted ids) at each token: ([n, |V*|] probabilities, [n] column of y_t).

    hidden [n, d], weight [V, d], targets [n] (each must be in `vocab`), old_logprobs [n].
    """
    cols = torch.searchsorted(vocab, targets)
    if bool((cols >= len(vocab)).any()) or bool((vocab[cols.clamp_max(len(vocab) - 1)] != targets).any()):
        raise ValueError("a target token is missing from the group's vocabulary V*")
    logits = hidden @ weight[vocab].to(hidden.dtype).T  # [n, |V*|] raw logits
    logit_y = logits.gather(1, cols[:, None])  # [n, 1]
    log_q = (logits - logit_y) / temperature + old_logprobs[:, None].to(hidden.dtype)
    return log_q.exp(), cols


def prediction_errors(probs: Tensor, cols: Tensor) -> Tensor:
    """g = e_y - q on V*.  probs [n, v], cols [n] -> [n, v]"""
    g = -probs.clone()
    g[torch.arange(len(cols)), cols] += 1.0
    return g


def positive_aggregate(g: Tensor, hidden: Tensor, positive: Tensor) -> Tensor:
    """M+ = sum_{positive tokens} g_t h_t^T.  g [n, v], hidden [n, d], positive [n] bool -> [v, d]"""
    return g[positive].T @ hidden[positive]


def hidden_reward_scores(g: Tensor, hidden: Tensor, aggregate: Tensor) -> Tensor:
    """s_t = g_t^T M+ h_t.  g [n, v], hidden [n, d], aggregate [v, d] -> [n]"""
    return ((g @ aggregate) * hidden).sum(-1)


def positive_anchor_threshold(scores: Tensor, response: Tensor, positive: Tensor, beta: float) -> float:
    """tau = beta * min over positive responses of their mean token score. scores/response/positive [n]."""
    ids = response[positive].unique()
    means = torch.stack([scores[positive & (response == i)].mean() for i in ids])
    return beta * means.min().item()


@dataclass
class GroupHiddenReward:
    """Per-group statistics of one prompt's responses in the scope."""

    vocab: Tensor  # [v] sorted token ids V*
    aggregate: Tensor  # [v, d] M+
    tau: float  # beta * min positive anchor
    success_rate: float  # rho = N+ / G


def response_signs(advantages: Tensor, mask: Tensor) -> Tensor:
    """Sign of each response's mean advantage over its valid tokens (0 for empty responses).  [B]"""
    total = (advantages * mask).sum(-1)
    return torch.sign(total) * (mask.sum(-1) > 0)


def group_hidden_rewards(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    group_ids: Tensor,
    temperature: float,
    beta: float = 1.0,
) -> dict[int, GroupHiddenReward]:
    """M+, tau and rho of every mixed group (0 < N+ < G) of the scope. Shapes: hidden [B, T, d], others [B, T]."""
    signs = response_signs(advantages, mask)
    valid = mask.ne(0)
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out: dict[int, GroupHiddenReward] = {}
    with torch.no_grad():
        for gid in group_ids.unique().tolist():
            rows = (group_ids == gid).nonzero().squeeze(1)
            n_pos = int((signs[rows] > 0).sum())
            if n_pos == 0 or n_pos == len(rows):
                continue
            sel = valid[rows]  # [b, T]
            h = hidden[rows][sel].to(dt)  # [n, d]
            y = targets[rows][sel].long()
            response = rows[:, None].expand_as(sel)[sel]
            positive = signs[response] > 0
            vocab = y.unique()
            probs, cols = vstar_probabilities(h, weight.to(dt), y, old_logprobs[rows][sel], vocab, temperature)
            g = prediction_errors(probs, cols)
            aggregate = positive_aggregate(g, h, positive)
            scores = hidden_reward_scores(g, h, aggregate)
            tau = positive_anchor_threshold(scores, response, positive, beta)
            out[int(gid)] = GroupHiddenReward(vocab, aggregate, tau, n_pos / len(rows))
    return out


@dataclass
class TokenHiddenRewards:
    """Per-token view of the group statistics, [B, T] each (0 / False outside mixed groups and on padding)."""

    scores: Tensor  # s_t
    tau: Tensor  # the group's tau
    success_rate: Tensor  # the group's rho = N+ / G
    scored: Tensor  # bool: valid token of a mixed group


def token_hidden_reward_scores(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    group_ids: Tensor,
    groups: dict[int, GroupHiddenReward],
    temperature: float,
) -> TokenHiddenRewards:
    """Score every valid token of the mixed groups in `groups` against its group's M+ (hidden [B, T, d])."""
    B, T = mask.shape
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out = TokenHiddenRewards(torch.zeros(B, T, dtype=dt), torch.zeros(B, T, dtype=dt), torch.zeros(B, T, dtype=dt),
                             torch.zeros(B, T, dtype=torch.bool))
    valid = mask.ne(0)
    with torch.no_grad():
        for gid, stats in groups.items():
            sel = valid & (group_ids == gid)[:, None]
            if not bool(sel.any()):
                continue
            h = hidden[sel].to(dt)
            probs, cols = vstar_probabilities(h, weight.to(dt), targets[sel].long(), old_logprobs[sel], stats.vocab,
                                              temperature)
            out.scores[sel] = hidden_reward_scores(prediction_errors(probs, cols), h, stats.aggregate.to(dt))
            out.tau[sel] = stats.tau
            out.success_rate[sel] = stats.success_rate
            out.scored |= sel
    return out


def hidden_extras(extras: dict[str, Tensor], part: str) -> tuple[Tensor, Tensor, Tensor, float]:
    """(old_hidden [B, T, d], lm_head_weight [V, d], response_ids [B, T], temperature) from LossInputs.extras."""
    missing = [k for k in HIDDEN_EXTRAS if k not in extras]
    if missing:
        raise ValueError(f"{part} needs extras {list(HIDDEN_EXTRAS)} from the learner (old-pass final hidden states, "
                         f"the lm_head weight, the response token ids and the sampling temperature); missing "
                         f"{missing}")
    return extras["old_hidden"], extras["lm_head_weight"], extras["response_ids"], float(extras["temperature"])


def scope_group_rewards(inputs: LossInputs, beta: float, part: str) -> dict[int, GroupHiddenReward]:
    """`group_hidden_rewards` of the groups in `inputs` (a micro-batch or a whole token_stat_scope)."""
    hidden, weight, ids, temperature = hidden_extras(inputs.extras, part)
    if inputs.group_ids is None:
        raise ValueError(f"{part} needs the group ids of the responses (LossInputs.group_ids)")
    return group_hidden_rewards(hidden, weight, ids, inputs.old_logprobs, inputs.advantages, inputs.mask,
                                inputs.group_ids, temperature, beta)


def score_loss_inputs(inputs: LossInputs, groups: dict[int, GroupHiddenReward], part: str) -> TokenHiddenRewards:
    """Token scores of `inputs` against the group statistics of its scope."""
    hidden, weight, ids, temperature = hidden_extras(inputs.extras, part)
    return token_hidden_reward_scores(hidden, weight, ids, inputs.old_logprobs, inputs.mask, inputs.group_ids,
                                      groups, temperature)
