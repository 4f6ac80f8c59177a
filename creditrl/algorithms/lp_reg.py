"""Lp-Reg: low-probability regularisation toward the min-p proxy distribution of the old policy.

Paper: Huang et al. (Tencent), "Low-probability Tokens Sustain Exploration in Reinforcement Learning with
Verifiable Reward", arXiv 2510.03222. Reference code: `CarlanLark/Lp-Reg-dev` @ 33b27e27,
`compute_policy_loss_lp_reg`, `apply_min_p`, `compute_minp_log_prob`. Spec: algorithms-token-level.md §12.

Proxy (old-pass, detached; `lp_reg_proxy_logprobs` is the full-logits reference, the learner gets it from the
fused kernel: `kernel_options` below, read back as `extras["old_proxy_logp"]`):

    K = {v : pi_v >= kappa * max_u pi_u}     on pi = softmax(raw logits z) (rule "minp"; "fixed": pi_v >= kappa)
    l~_t = z_y / T - log sum_{v in K} exp(z_v / T)   if y in K,   -inf otherwise

Selection, per sign s in {neg: A < 0, pos: A > 0} over the valid tokens of the scope (`token_stat_scope`):

    k_s = max(1, floor(|cand_s| * rho_s));  the regulariser is active only if k_s > 1 (the reference's gate)
    selected = the k_s candidates with the lowest current log-prob l_t (detached), and l_t < l~_t

On selected tokens the per-token loss is REPLACED (not added to):

    L_t = -A_t r_t + beta * KL_t,   r_t = exp(clamp(l - l_old, -20, 20))   (unclipped surrogate)
    KL_t = clamp(exp(l~_t - l_t) - (l~_t - l_t) - 1, -10, 10)               (k3 on the log-ratio l~ - l)

dKL/dl = 1 - pi~(y)/pi_theta(y) < 0 on selected tokens, so minimising pushes pi_theta(y) up toward pi~(y).
All other tokens keep the incoming loss (the reference's base loss is the PPO clip with eps 1.0 / 9.0 and no
dual clip: `ppo_clip` with clip_low 1.0, clip_high 9.0, dual_clip null). A token weight composed before Lp-Reg
is overwritten on the selected tokens, since their loss is replaced.

Follow: code (§12.6). Per-token k3 on the sampled token only (not a full-vocabulary KL); unclipped surrogate on
selected tokens; the `k > 1` gate (logged as `lp_reg/gate_open`); relative min-p with kappa = 0.02. Differences:
filtered tokens get l~ = -inf here (the reference fills -1e4, i.e. l~ ~ -1e4/T - lse); both exclude them. The
log-ratio is clamped to [-20, 20] before exp as in verl (the reference takes the raw ratio); identical unless r
overflows. Ties at the k-th log-prob are all selected (see `token_scope`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import REGULARIZERS
from creditrl.algorithms.token_scope import (
    AllReduce, ScopedPart, ScopedStats, kth_smallest, local_all_reduce, scope_count,
)

PROXY_EXTRA = "old_proxy_logp"  # extras key: the kernel's `proxy_logp` output of the old-log-prob pass


def lp_reg_proxy_logprobs(
    logits: Tensor, targets: Tensor, threshold: float = 0.02, rule: str = "minp", temperature: float = 1.0
) -> Tensor:
    """Proxy log-prob l~ of `targets` [...] under the min-p filtered softmax of `logits` [..., V] (-inf if filtered).

    The keep set is decided on softmax(logits) at temperature 1 (the raw logits, as the reference), the proxy
    distribution is the renormalised softmax(logits / T) over the keep set.
    """
    probs = torch.softmax(logits, dim=-1)
    if rule == "minp":
        keep = probs >= threshold * probs.amax(dim=-1, keepdim=True)
    elif rule == "fixed":
        keep = probs >= threshold
    else:
        raise ValueError(f"unknown Lp-Reg rule '{rule}'; use minp or fixed")
    log_q = torch.log_softmax((logits / temperature).masked_fill(~keep, -math.inf), dim=-1)
    return log_q.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@dataclass
class LpRegStats:
    """Per sign: the k-th lowest current log-prob among the candidates (None: gate closed) and k."""

    neg_threshold: float | None
    neg_k: int
    pos_threshold: float | None
    pos_k: int


def _bottom_k(logprobs: Tensor, candidates: Tensor, ratio: float, all_reduce: AllReduce) -> tuple[float | None, int]:
    n = scope_count(candidates, all_reduce)
    k = max(1, int(math.floor(n * ratio)))
    if k <= 1 or n == 0:  # the reference gate: k > 1
        return None, k
    return kth_smallest(logprobs.detach()[candidates], k, all_reduce), k


def lp_reg_stats(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, neg_ratio: float, pos_ratio: float,
    all_reduce: AllReduce = local_all_reduce,
) -> LpRegStats:
    """Bottom-rho log-prob thresholds of the negative- and positive-advantage tokens of the scope."""
    valid = mask.ne(0)
    neg_t, neg_k = _bottom_k(logprobs, valid & (advantages < 0), neg_ratio, all_reduce)
    pos_t, pos_k = _bottom_k(logprobs, valid & (advantages > 0), pos_ratio, all_reduce)
    return LpRegStats(neg_t, neg_k, pos_t, pos_k)


def lp_reg_candidates(logprobs: Tensor, advantages: Tensor, mask: Tensor, stats: LpRegStats) -> Tensor:
    """Bottom-rho tokens by current log-prob, per advantage sign, before the proxy filter.  [B, T] bool"""
    valid = mask.ne(0)
    lp = logprobs.detach()
    out = torch.zeros_like(valid)
    if stats.neg_threshold is not None:
        out |= valid & (advantages < 0) & (lp <= stats.neg_threshold)
    if stats.pos_threshold is not None:
        out |= valid & (advantages > 0) & (lp <= stats.pos_threshold)
    return out


def lp_reg_loss(
    loss: Tensor,
    logprobs: Tensor,
    old_logprobs: Tensor,
    proxy_logprobs: Tensor,
    advantages: Tensor,
    selected: Tensor,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Replace `loss` [B, T] on `selected` tokens by -A r + beta KL(l~ - l); returns (loss, KL) [B, T]."""
    lp = logprobs
    target = torch.where(selected, proxy_logprobs.detach().to(lp.dtype), lp.detach())  # finite everywhere
    d = target - lp  # l~ - l on selected tokens, 0 elsewhere
    kl = torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
    ratio = torch.exp(torch.clamp(lp - old_logprobs, -20.0, 20.0))
    reg = -advantages * ratio + beta * kl
    return torch.where(selected, reg, loss), kl


@dataclass
class LpRegConfig:
    beta: float = 1.0  # ppo_kl_coef
    neg_ratio: float = 0.01  # rho_neg, logp_neg_k_percent (0.01 for Qwen3-14B, 0.005 for Qwen2.5-32B)
    pos_ratio: float = 0.0  # rho_pos; 0 in every reference script
    threshold: float = 0.02  # kappa, minp_p_threshold
    rule: Literal["minp", "fixed"] = "minp"  # regular_type

    def __post_init__(self):
        if self.beta < 0:
            raise ValueError(f"lp_reg.beta must be >= 0, got {self.beta}")
        for name in ("neg_ratio", "pos_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"lp_reg.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"lp_reg.threshold (kappa) must be in (0, 1], got {self.threshold}")
        if self.rule not in ("minp", "fixed"):
            raise ValueError(f"lp_reg.rule must be 'minp' or 'fixed', got '{self.rule}'")


@REGULARIZERS.register("lp_reg", LpRegConfig)
class LpReg(ScopedPart):
    """Lp-Reg: replace the loss of low-probability negative tokens by -A r + beta k3(pi~ / pi) (arXiv 2510.03222)."""

    needs = frozenset({PROXY_EXTRA})

    def __init__(self, cfg: LpRegConfig):
        self.cfg = cfg
        self._stats = ScopedStats("lp_reg")
        # What the learner passes to creditrl.kernels.linear_token_stats in the old-log-prob pass (with
        # "proxy_logp" added to `want`); threshold on the raw logits, proxy at the sampling temperature.
        self.kernel_options: dict = {"lp_reg": {"threshold": cfg.threshold, "rule": cfg.rule,
                                                "threshold_temperature": 1.0, "soft": False}}

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> LpRegStats:
        c = self.cfg
        return lp_reg_stats(inputs.logprobs, inputs.advantages, inputs.mask, c.neg_ratio, c.pos_ratio, all_reduce)

    def __call__(self, inputs: LossInputs, loss: Tensor) -> tuple[Tensor, Metrics]:
        proxy = inputs.extras.get(PROXY_EXTRA)
        if proxy is None:
            raise ValueError(f"lp_reg needs the old-pass proxy log-probs extras['{PROXY_EXTRA}'] (the kernel's "
                             f"proxy_logp with lp_reg={self.kernel_options['lp_reg']}), but they were not computed")
        stats = self._stats.get(inputs, self._compute_stats)
        candidates = lp_reg_candidates(inputs.logprobs, inputs.advantages, inputs.mask, stats)
        selected = candidates & (inputs.logprobs.detach() < proxy)
        new_loss, kl = lp_reg_loss(loss, inputs.logprobs, inputs.old_logprobs, proxy, inputs.advantages, selected,
                                   self.cfg.beta)
        m = inputs.mask
        sel = selected.to(m.dtype)
        n_cand = candidates.sum().clamp_min(1)
        metrics: Metrics = {
            "lp_reg/coverage": masked_mean(sel, m).item(),
            "lp_reg/gate_open": float(stats.neg_threshold is not None),
            "lp_reg/candidate_frac": masked_mean(candidates.to(m.dtype), m).item(),
            "lp_reg/filtered_frac": ((candidates & ~torch.isfinite(proxy)).sum() / n_cand).item(),
            "lp_reg/kl_mean": masked_mean(kl.detach(), sel).item(),
            "lp_reg/proxy_gap_mean": masked_mean(torch.where(selected, proxy - inputs.logprobs.detach(), 0.0),
                                                 sel).item(),
            "lp_reg/proxy_support_frac": masked_mean(torch.isfinite(proxy).to(m.dtype), m).item(),
        }
        if stats.neg_threshold is not None:
            metrics["lp_reg/neg_threshold_logprob"] = stats.neg_threshold
        return new_loss * m, metrics
