"""Registries of algorithm parts. Each part module registers itself here with one decorator line.

    @POLICY_LOSSES.register("ppo_clip", PPOClipConfig)
    class PPOClip: ...

`creditrl/algorithms/__init__.py` imports every part module so the registries are filled on import.
"""

from __future__ import annotations

from creditrl.algorithms.base import AdvantageEstimator, PolicyLoss, Regularizer, TokenWeight
from creditrl.registry import Registry

ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")
TOKEN_WEIGHTS: Registry[TokenWeight] = Registry("token weighting")
REGULARIZERS: Registry[Regularizer] = Registry("regularizer")
