"""STEER: token weights that damp the tokens whose update would change the entropy most.

Paper: Hao, Wang et al., "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective",
arXiv 2510.10150. Reference code: `zz-haooo/STEER` @ b31df716, `compute_token_weights` and
`compute_policy_loss_with_entropy` ("entropy_control"). Spec: algorithms-token-level.md §9.

Per valid token t (everything detached):

    x_t = clamp(p_t, 1e-8, 1 - 1e-8)       p_t = exp(l_t), the CURRENT policy's probability of the sampled token
    qbar_t = clamp(q_t, 1e-8, 1)            q_t = exp(l_old_t)
    Omega_t = (A_t / qbar_t) * x_t (1 - x_t) * (ln x_t + H_old_t)      H_old from the old-log-prob pass
    a_t = |Omega_t|  (non-finite Omega -> 0);  a_min, a_max over the valid tokens of the scope

    exp mode     k = -ln(lambda_min) / max(a_max, 0.02);   w_t = clamp(exp(-k a_t), lambda_min, 1)
    linear mode  w_t = clamp(w_max - (a_t - a_min)(w_max - w_min) / (a_max - a_min), w_min, w_max)
                 (a_max == a_min: every token gets (w_min + w_max) / 2)

w_t = 0 on padding; a scope without valid tokens gives all-zero weights. The per-token loss becomes w_t * L_t
(with the dual-clip PPO loss, ppo_clip with dual_clip 10 and clip 0.2/0.28 in the reference scripts).

Omega > 0 predicts an entropy drop for the sampled-token term of the first-order entropy change (§9.2).

Follow: code (§9.5). Omega has p(1-p) and mixes policies (x current; q and H old), as the released code does;
the paper may write p^2(1-p) with pi_old only (UNVERIFIED). PPO-clipped tokens are not excluded from the min/max.
The statistics a_min/a_max follow `token_stat_scope` (reference: per micro-batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import TOKEN_WEIGHTS
from creditrl.algorithms.token_scope import (
    AllReduce, ScopedPart, ScopedStats, local_all_reduce, scope_count, scope_max, scope_min,
)


def steer_omega(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, old_entropy: Tensor) -> Tensor:
    """Entropy-change score Omega [B, T] (float64, detached, non-finite values set to 0). Inputs [B, T]."""
    x = logprobs.detach().double().exp().clamp(1e-8, 1.0 - 1e-8)
    q = old_logprobs.detach().double().exp().clamp(1e-8, 1.0)
    omega = advantages.detach().double() / q * x * (1.0 - x) * (torch.log(x) + old_entropy.detach().double())
    return torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))


@dataclass
class SteerStats:
    """min and max of |Omega| over the valid tokens of the scope (None when the scope has none)."""

    a_min: float | None
    a_max: float | None


def steer_stats(omega: Tensor, mask: Tensor, all_reduce: AllReduce = local_all_reduce) -> SteerStats:
    if scope_count(mask, all_reduce) == 0:
        return SteerStats(None, None)
    a = omega.abs()
    return SteerStats(scope_min(a, mask, all_reduce).item(), scope_max(a, mask, all_reduce).item())


def steer_weights(
    omega: Tensor,
    mask: Tensor,
    stats: SteerStats,
    mode: str = "exp",
    w_min: float = 0.8,
    w_max: float = 1.2,
    exp_floor: float = 0.02,
) -> Tensor:
    """STEER token weights [B, T] (float64) from Omega [B, T], the mask and the scope's |Omega| range."""
    if stats.a_max is None:
        return torch.zeros_like(omega)
    a = omega.abs()
    if mode == "exp":
        k = -math.log(w_min) / max(stats.a_max, exp_floor)
        w = torch.exp(-k * a).clamp(w_min, 1.0)
    elif mode == "linear":
        span = stats.a_max - stats.a_min
        if span == 0.0:
            w = torch.full_like(a, 0.5 * (w_min + w_max))
        else:
            w = (w_max - (a - stats.a_min) * (w_max - w_min) / span).clamp(w_min, w_max)
    else:
        raise ValueError(f"unknown STEER mode '{mode}'; use exp or linear")
    return w * mask.ne(0)


@dataclass
class SteerConfig:
    mode: Literal["exp", "linear"] = "exp"  # exp: run_exp.sh (default); linear: run_linear.sh
    w_min: float = 0.8  # lambda_min (exp) / lower weight (linear)
    w_max: float = 1.2  # upper weight of linear mode (unused by exp mode, whose weights are <= 1)
    exp_floor: float = 0.02  # floor on a_max in exp mode (reference constant)

    def __post_init__(self):
        if self.mode not in ("exp", "linear"):
            raise ValueError(f"steer.mode must be 'exp' or 'linear', got '{self.mode}'")
        if self.mode == "exp" and not 0.0 < self.w_min <= 1.0:
            raise ValueError(f"steer.w_min (lambda_min) must be in (0, 1] in exp mode, got {self.w_min}")
        if self.mode == "linear" and not 0.0 <= self.w_min <= self.w_max:
            raise ValueError(f"steer needs 0 <= w_min <= w_max in linear mode, got {self.w_min}, {self.w_max}")
        if self.exp_floor <= 0:
            raise ValueError(f"steer.exp_floor must be > 0, got {self.exp_floor}")


@TOKEN_WEIGHTS.register("steer", SteerConfig)
class SteerWeight(ScopedPart):
    """STEER entropy-change-aware token weights (arXiv 2510.10150); needs the old-pass entropy."""

    needs = frozenset({"old_entropy"})

    def __init__(self, cfg: SteerConfig):
        self.cfg = cfg
        self._stats = ScopedStats("steer")

    def _omega(self, inputs: LossInputs) -> Tensor:
        if inputs.old_entropy is None:
            raise ValueError("steer needs the old-policy entropy (old_entropy), but it was not computed")
        return steer_omega(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.old_entropy)

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> SteerStats:
        return steer_stats(self._omega(inputs), inputs.mask, all_reduce)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        omega = self._omega(inputs)
        stats = self._stats.get(inputs, self._compute_stats)
        c = self.cfg
        w = steer_weights(omega, inputs.mask, stats, c.mode, c.w_min, c.w_max, c.exp_floor)
        m = inputs.mask
        valid = m.ne(0)
        metrics: Metrics = {
            "steer/weight_mean": masked_mean(w, m).item(),
            "steer/omega_mean": masked_mean(omega, m).item(),
            "steer/omega_abs_max": stats.a_max if stats.a_max is not None else 0.0,
            "steer/weight_at_min_frac": masked_mean((w <= c.w_min + 1e-12).double(), m).item(),
        }
        if bool(valid.any()):
            metrics["steer/weight_min"] = w[valid].min().item()
            metrics["steer/weight_max"] = w[valid].max().item()
        return w.to(inputs.logprobs.dtype), None, metrics
