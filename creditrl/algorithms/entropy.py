"""Entropy bonus: L_t - coef * H_t, aggregated like the policy loss (verl `entropy_coeff`).

H_t = logsumexp(z_t) - sum_v softmax(z_t)_v z_{t,v} of the temperature-scaled logits of the *current* policy;
the gradient flows through H (algorithms.md section 5). H comes from `creditrl.kernels` without materialising
the [tokens, vocab] logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import REGULARIZERS


@dataclass
class EntropyBonusConfig:
    coef: float = 0.001  # weight of the entropy bonus: L_t - coef * H_t


@REGULARIZERS.register("entropy_bonus", EntropyBonusConfig)
class EntropyBonus:
    """Entropy bonus: subtract coef * H_t of the current policy from the per-token loss."""

    needs = frozenset({"entropy"})

    def __init__(self, cfg: EntropyBonusConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs, loss: Tensor) -> tuple[Tensor, Metrics]:
        if inputs.entropy is None:
            raise ValueError("entropy_bonus needs the policy entropy, but it was not computed")
        return loss - self.cfg.coef * inputs.entropy * inputs.mask, {
            "actor/entropy_bonus": masked_mean(inputs.entropy, inputs.mask).detach()
        }
