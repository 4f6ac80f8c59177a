"""An algorithm composed from registered parts, as a recipe's `algorithm:` block names them.

    algorithm:
      advantage: grpo                                   # or {name: grpo, norm_by_std: false}
      policy_loss: {name: ppo_clip, clip_high: 0.28}
      token_weights: [{name: steer}]                    # applied in order
      regularizers: [{name: entropy_bonus, coef: 0.001}]
      loss_agg: token-mean
      kl: {coef: 0.001, estimator: k3, placement: loss}
      token_stat_scope: micro_batch

The per-micro-batch loss, top to bottom:

    L = policy_loss(inputs)                  [B, T]
    for w in token_weights: L = L * w; mask = w's mask (if it returns one)
    for r in regularizers (+ KL loss):  L = r(inputs, L)
    loss = aggregate(L, mask, loss_agg, mini-batch normalisers)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.aggregation import LOSS_AGG_MODES, aggregate_loss
from creditrl.algorithms.base import AdvantageInputs, AggregationNorm, LossInputs, Metrics
from creditrl.algorithms.kl import KLLoss, KLLossConfig, kl_reward_penalty
from creditrl.algorithms.registry import ADVANTAGES, POLICY_LOSSES, REGULARIZERS, TOKEN_WEIGHTS
from creditrl.registry import PartSpec, part, parts


@dataclass
class KLConfig:
    """KL to the reference model. coef 0 disables it (and the reference model is not loaded)."""

    coef: float = 0.0
    estimator: str = "k3"
    placement: Literal["loss", "reward"] = "loss"

    def __post_init__(self):
        KLLossConfig(self.coef, self.estimator)  # validates the estimator name


@dataclass
class AlgorithmConfig:
    advantage: PartSpec = part(ADVANTAGES, "grpo")
    policy_loss: PartSpec = part(POLICY_LOSSES, "ppo_clip")
    token_weights: list[PartSpec] = parts(TOKEN_WEIGHTS)
    regularizers: list[PartSpec] = parts(REGULARIZERS)
    loss_agg: str = "token-mean"
    loss_agg_norm_len: int | None = None  # K of seq-mean-token-sum-norm; null = rollout.max_new_tokens
    kl: KLConfig = None  # type: ignore[assignment]
    token_stat_scope: Literal["micro_batch", "mini_batch", "global"] = "micro_batch"

    def __post_init__(self):
        if self.kl is None:
            self.kl = KLConfig()
        if self.loss_agg not in LOSS_AGG_MODES:
            raise ValueError(f"unknown loss_agg '{self.loss_agg}'; choose one of {', '.join(LOSS_AGG_MODES)}")


class Algorithm:
    """The composed parts of one algorithm. Holds no tensors; cross-step state lives in the parts."""

    def __init__(self, cfg: AlgorithmConfig):
        self.cfg = cfg
        self.advantage = ADVANTAGES.build(cfg.advantage.name, cfg.advantage.options)
        self.policy_loss = POLICY_LOSSES.build(cfg.policy_loss.name, cfg.policy_loss.options)
        self.token_weights = [TOKEN_WEIGHTS.build(p.name, p.options) for p in cfg.token_weights]
        self.regularizers = [REGULARIZERS.build(p.name, p.options) for p in cfg.regularizers]
        if cfg.kl.coef > 0 and cfg.kl.placement == "loss":
            self.regularizers.append(KLLoss(KLLossConfig(cfg.kl.coef, cfg.kl.estimator)))
        parts_ = [self.advantage, self.policy_loss, *self.token_weights, *self.regularizers]
        self.needs: frozenset[str] = frozenset().union(*(getattr(p, "needs", frozenset()) for p in parts_))
        if cfg.kl.coef > 0:
            self.needs = self.needs | {"ref_logprobs"}

    # ---- once per step -------------------------------------------------------------------------------
    def advantages(self, inputs: AdvantageInputs, ref_logprobs: Tensor | None = None) -> tuple[Tensor, Metrics]:
        """Advantages [B, T]; applies the KL-in-reward penalty first when `kl.placement: reward`."""
        metrics: Metrics = {}
        kl = self.cfg.kl
        if kl.coef > 0 and kl.placement == "reward":
            if ref_logprobs is None or inputs.old_logprobs is None:
                raise ValueError("kl.placement 'reward' needs old and reference log-probs")
            token_rewards = inputs.token_rewards
            if token_rewards is None:
                token_rewards = _reward_on_last_token(inputs.rewards, inputs.mask)
            token_rewards, kl_t = kl_reward_penalty(
                token_rewards, inputs.old_logprobs, ref_logprobs, inputs.mask, kl.coef, kl.estimator
            )
            inputs = replace(inputs, token_rewards=token_rewards, rewards=token_rewards.sum(-1))
            metrics["actor/kl_in_reward"] = (kl_t.sum() / inputs.mask.sum().clamp_min(1)).item()
        adv, m = self.advantage(inputs)
        metrics.update(m)
        return adv, metrics

    # ---- every micro-batch ---------------------------------------------------------------------------
    def loss(self, inputs: LossInputs, norm: AggregationNorm | None = None) -> tuple[Tensor, Metrics]:
        """Scalar loss of one micro-batch and its metrics (see the module docstring for the order)."""
        loss, metrics = self.policy_loss(inputs)
        metrics = dict(metrics)
        for w in self.token_weights:
            weights, new_mask, m = w(inputs)
            loss = loss * weights.detach()
            if new_mask is not None:
                inputs = inputs.with_mask(new_mask)
            metrics.update(m)
        for r in self.regularizers:
            loss, m = r(inputs, loss)
            metrics.update(m)
        norm = norm or AggregationNorm()
        if self.cfg.loss_agg == "seq-mean-token-sum-norm" and norm.norm_len is None:
            norm = replace(norm, norm_len=self.cfg.loss_agg_norm_len)
        total = aggregate_loss(loss, inputs.mask, self.cfg.loss_agg, norm)
        return total, metrics

    def state_dict(self) -> dict:
        return {"advantage": self.advantage.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.advantage.load_state_dict(state.get("advantage", {}))


def _reward_on_last_token(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence reward [B] on its last valid token -> [B, T] (verl's convention)."""
    out = torch.zeros_like(mask, dtype=rewards.dtype)
    last = (mask.sum(-1).long() - 1).clamp_min(0)
    out[torch.arange(len(rewards)), last] = rewards * (mask.sum(-1) > 0).to(rewards.dtype)
    return out
