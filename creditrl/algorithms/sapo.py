"""SAPO: soft adaptive policy optimisation (Qwen team, arXiv 2511.20347).

PPO's hard clip is replaced by a smooth, temperature-controlled gate on the token ratio, so tokens far off-policy
are damped rather than cut off, with a separate temperature for negative advantages:

    r   = exp(clamp(l - l_old, -20, 20))
    tau = tau_pos where A > 0, tau_neg where A <= 0
    f   = (4 / tau) sigmoid(tau (r - 1))                 f(1) = 2 / tau; df/dl = 4 sigmoid (1 - sigmoid) r
    L   = -f A                                           on-policy (r = 1) the gradient is -A grad(l), as PPO's

Defaults tau_pos = 1.0, tau_neg = 1.05 (verl `ActorConfig.tau_pos/tau_neg`, TRL `sapo_temperature_pos/neg`).
Aggregation: verl forces `seq-mean-token-mean` and TRL aggregates `sapo` like `grpo` (the same, except that TRL
counts empty responses in the mean over sequences), so set `loss_agg: seq-mean-token-mean` in the recipe; other
modes are allowed. The +-20 clamp of the log-ratio is verl's (TRL has none; identical inside it).
References: verl 0.9.1 `compute_policy_loss_sapo`, TRL 1.16 `loss_type="sapo"` (algorithms.md section 2.6).
Metrics: `sapo/gate_mean` (mean f), `sapo/gate_grad_mean` (mean df/dl = 4 sigmoid (1 - sigmoid) r: 1 on-policy,
-> 0 far off-policy), `ppo_kl` = mean(l_old - l). verl reports `pg_clipfrac` = 0 for SAPO; it is not logged here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import POLICY_LOSSES


def sapo_gate(ratio: Tensor, tau: Tensor | float) -> Tensor:
    """The SAPO gate f(r) = (4 / tau) sigmoid(tau (r - 1))."""
    return torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)


def sapo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[Tensor, Metrics]:
    """Per-token SAPO loss [B, T] and its metrics. All inputs [B, T]."""
    delta = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(delta)
    tau = torch.where(advantages > 0, torch.full_like(advantages, tau_pos), torch.full_like(advantages, tau_neg))
    gate = sapo_gate(ratio, tau)
    loss = -gate * advantages
    with torch.no_grad():
        s = torch.sigmoid(tau * (ratio - 1.0))
        metrics: Metrics = {
            "sapo/gate_mean": masked_mean(gate, mask),
            "sapo/gate_grad_mean": masked_mean(4.0 * s * (1.0 - s) * ratio, mask),
            "ppo_kl": masked_mean(-delta, mask),
        }
    return loss * mask, metrics


@dataclass
class SAPOConfig:
    tau_pos: float = 1.0  # temperature where A > 0 (verl tau_pos, TRL sapo_temperature_pos)
    tau_neg: float = 1.05  # temperature where A <= 0 (verl tau_neg, TRL sapo_temperature_neg)

    def __post_init__(self):
        for name in ("tau_pos", "tau_neg"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"sapo.{name} must be > 0 (got {value}); the paper and verl/TRL use "
                                 f"tau_pos 1.0, tau_neg 1.05")


@POLICY_LOSSES.register("sapo", SAPOConfig)
class SAPO:
    """SAPO: a smooth sigmoid gate on the token ratio instead of PPO's hard clip (use seq-mean-token-mean)."""

    needs = frozenset()

    def __init__(self, cfg: SAPOConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        return sapo_loss(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, c.tau_pos, c.tau_neg)
