"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL divergence").

With d = l - l_ref (l = log pi_theta(y_t), l_ref = log pi_ref(y_t)):

    k1 (kl)           d                                           gradient  grad(l)
    abs               |d|                                         gradient  sign(d) grad(l)
    k2 (mse)          d^2 / 2                                     gradient  d grad(l)
    k3 (low_var_kl)   u = clamp(l_ref - l, -20, 20); clamp(e^u - u - 1, -10, 10)
    k3_unclamped      u = l_ref - l; e^u - u - 1                  TRL's k3 (no clamps); gradient (1 - e^u) grad(l)
    <name>+           value of <name>, gradient of k2 (straight-through): k2 - sg(k2) + sg(<name>)

Bias correction (`bias_correction: true`, loss placement only; TRL `use_bias_correction_kl`, default True in TRL
1.16, from DeepSeek-V3.2, arXiv 2512.02556): the per-token KL is multiplied by the token ratio, *not* detached,

    KL_t <- r_t KL_t,      r_t = exp(l - l_old)  (unclamped, as TRL)

so that, with samples from pi_old, E[r KL] is the KL of the current policy and the gradient is the unbiased
reverse-KL gradient; it changes the gradient even on-policy (r = 1 in value, grad r = r grad l). TRL with
`beta > 0` and `use_bias_correction_kl=True` (token-level importance sampling) is `estimator: k3_unclamped`,
`bias_correction: true`; with it false, `estimator: k3_unclamped`.

References: verl 0.9.1 `kl_penalty_forward` (algorithms.md section 4); TRL 1.16 `GRPOTrainer._compute_loss`
(section 4.1). Placement: as a loss term (GRPO style, `KLLoss`, aggregated like the policy loss) or as a reward
penalty (`kl_reward_penalty`, applied before the advantage estimator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import REGULARIZERS

KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "k3_unclamped", "k1+", "k2+", "k3+", "abs+", "k3_unclamped+")
_BASES = ("k1", "k2", "k3", "abs", "k3_unclamped")
_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL estimate [B, T] between the policy and the reference (see module docstring)."""
    straight_through = estimator.endswith("+")
    base = _ALIASES.get(estimator.rstrip("+"), estimator.rstrip("+"))
    d = logprobs - ref_logprobs
    if base == "k1":
        value = d
    elif base == "abs":
        value = d.abs()
    elif base == "k2":
        value = 0.5 * d.square()
    elif base == "k3":
        u = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
        value = torch.clamp(torch.exp(u) - u - 1.0, -10.0, 10.0)
    elif base == "k3_unclamped":
        u = ref_logprobs - logprobs
        value = torch.exp(u) - u - 1.0
    else:
        raise ValueError(f"unknown KL estimator '{estimator}'; choose one of {', '.join(KL_ESTIMATORS)}")
    if straight_through:
        k2 = 0.5 * d.square()
        value = k2 - k2.detach() + value.detach()
    return value


def check_estimator(estimator: str, field: str = "kl.estimator") -> None:
    """Raise a config error naming `field` when `estimator` is not a known KL estimator."""
    name = _ALIASES.get(estimator.rstrip("+"), estimator.rstrip("+"))
    if name not in _BASES or estimator.count("+") > 1:
        raise ValueError(f"{field}: unknown KL estimator '{estimator}'; choose one of {', '.join(KL_ESTIMATORS)} "
                         f"(aliases {', '.join(_ALIASES)})")


def bias_corrected(kl: Tensor, logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """TRL's bias-corrected KL: KL_t * exp(l - l_old), the ratio not detached and not clamped."""
    return kl * torch.exp(logprobs - old_logprobs)


@dataclass
class KLLossConfig:
    coef: float = 0.001  # weight of the KL term: L_t + coef * KL_t
    estimator: str = "k3"  # k1 | k2 | k3 | abs | k3_unclamped, + suffix = k2 gradient; aliases kl, mse, low_var_kl
    bias_correction: bool = False  # KL_t * exp(l - l_old), not detached (TRL use_bias_correction_kl)

    def __post_init__(self):
        check_estimator(self.estimator, "kl_loss.estimator")


@REGULARIZERS.register("kl_loss", KLLossConfig)
class KLLoss:
    """KL to the reference model as a loss term: L + coef * KL_t (GRPO style)."""

    needs = frozenset({"ref_logprobs"})

    def __init__(self, cfg: KLLossConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs, loss: Tensor) -> tuple[Tensor, Metrics]:
        if inputs.ref_logprobs is None:
            raise ValueError("kl_loss needs reference log-probs, but none were computed")
        kl = kl_penalty(inputs.logprobs, inputs.ref_logprobs, self.cfg.estimator)
        if self.cfg.bias_correction:
            kl = bias_corrected(kl, inputs.logprobs, inputs.old_logprobs)
        return loss + self.cfg.coef * kl * inputs.mask, {"actor/kl_loss": masked_mean(kl, inputs.mask).detach()}


def kl_reward_penalty(
    token_rewards: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, coef: float, estimator: str
) -> tuple[Tensor, Tensor]:
    """KL in the reward (verl `apply_kl_penalty`): r_t - coef * m_t * KL(l_old, l_ref). Returns (rewards, kl)."""
    kl = kl_penalty(old_logprobs, ref_logprobs, estimator) * mask  # [B, T]
    return token_rewards - coef * kl, kl
