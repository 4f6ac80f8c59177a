"""An algorithm composed from registered parts, as a recipe's `algorithm:` block names them.

    algorithm:
      advantage: grpo                                   # or {name: grpo, norm_by_std: false}
      policy_loss: {name: ppo_clip, clip_high: 0.28}
      token_weights: [{name: steer}]                    # applied in order
      regularizers: [{name: entropy_bonus, coef: 0.001}]
      loss_agg: token-mean
      kl: {coef: 0.001, estimator: k3, placement: loss, bias_correction: false}
      token_stat_scope: micro_batch

The per-micro-batch loss, top to bottom:

    L = policy_loss(inputs)                  [B, T]
    for w in token_weights: L = L * w; mask = w's mask (if it returns one)
    for r in regularizers (+ KL loss):  L = r(inputs, L)
    loss = aggregate(L, mask, loss_agg, mini-batch normalisers)

token_stat_scope (algorithms.md §17.1, `creditrl/algorithms/token_scope.py`). Parts whose statistics select or
normalise tokens (STEER, 80/20, HAPO, Lp-Reg, THR/NTHR) have a `scope` attribute, which `Algorithm` sets from
`token_stat_scope`, and a `prepare(inputs, all_reduce)` method. With `micro_batch` (default, reference parity)
they take their statistics from each micro-batch. With `mini_batch` / `global` the learner calls
`Algorithm.prepare(scope_inputs)` with the no-grad `LossInputs` of the whole scope (all micro-batches of the
mini-batch, or the whole step batch) before the micro-batches; each part stores its statistics there. Parts are
prepared in loss order, so a part after a masking token weight sees the masked scope, as in `loss`.

Denominators when a token weight returns a new mask (e.g. 80/20): the tokens it drops leave the aggregation
denominator too. The learner's `AggregationNorm` counts the mini-batch's original mask, so `loss` scales its
`num_tokens` / `num_seqs` by the kept fraction: the scope's (exact) with mini_batch / global, the micro-batch's
with micro_batch (exact when the kept fraction is the same in every micro-batch; the reference normalises each
micro-batch by its own kept count).

Parts that need old-pass kernel statistics declare `kernel_options` (kwargs of
`creditrl.kernels.linear_token_stats`, e.g. Lp-Reg's `lp_reg` settings) and a need "old_<stat>";
`Algorithm.kernel_options` merges them for the learner's old-log-prob pass, which stores the kernel's `<stat>`
output as `LossInputs.extras["old_<stat>"]`. `Algorithm.stats` is the checked, typed summary of what every
learner must compute (`creditrl/algorithms/needs.py`): a need no learner provides fails here, at config time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from creditrl.algorithms.aggregation import LOSS_AGG_MODES, aggregate_loss
from creditrl.algorithms.base import AdvantageInputs, AggregationNorm, LossInputs, Metrics
from creditrl.algorithms.hapo_clip import HapoClip
from creditrl.algorithms.hapo_redistribution import HapoRedistribution
from creditrl.algorithms.kl import KLLoss, KLLossConfig, check_estimator, kl_reward_penalty
from creditrl.algorithms.needs import StatRequest, stat_request
from creditrl.algorithms.registry import ADVANTAGES, POLICY_LOSSES, REGULARIZERS, TOKEN_WEIGHTS
from creditrl.algorithms.token_scope import AllReduce, check_scope, local_all_reduce
from creditrl.registry import PartSpec, part, parts


@dataclass
class KLConfig:
    """KL to the reference model. coef 0 disables it (and the reference model is not loaded)."""

    coef: float = 0.0  # KL coefficient beta; 0 = no KL (and no reference model)
    estimator: str = "k3"  # per-token KL estimator: k1 | k2 | k3 | abs | k3_unclamped, "+" variants (kl.py)
    placement: Literal["loss", "reward"] = "loss"  # loss: a KL loss term; reward: subtracted from token rewards
    bias_correction: bool = False  # KL_t * exp(l - l_old), not detached (TRL use_bias_correction_kl); loss only

    def __post_init__(self):
        check_estimator(self.estimator, "algorithm.kl.estimator")
        if self.bias_correction and self.placement == "reward":
            raise ValueError("algorithm.kl.bias_correction: true weights the KL loss term by the current/old ratio, "
                             "but kl.placement is reward (the penalty uses the old policy, so the ratio is 1): "
                             "use placement: loss or set bias_correction: false")


@dataclass
class AlgorithmConfig:
    advantage: PartSpec = part(ADVANTAGES, "grpo")  # advantage estimator: a name or {name: ..., <options>}
    policy_loss: PartSpec = part(POLICY_LOSSES, "ppo_clip")  # per-token policy loss (creditrl list parts)
    token_weights: list[PartSpec] = parts(TOKEN_WEIGHTS)  # per-token weights / masks, applied in order
    regularizers: list[PartSpec] = parts(REGULARIZERS)  # extra loss terms (entropy bonus, Lp-Reg, ...)
    # aggregation of the [B, T] loss: token-mean | token-sum | seq-mean-token-sum | seq-mean-token-mean |
    # seq-mean-token-sum-norm (creditrl/algorithms/aggregation.py)
    loss_agg: str = "token-mean"
    loss_agg_norm_len: int | None = None  # K of seq-mean-token-sum-norm; null = rollout.max_new_tokens
    kl: KLConfig = None  # type: ignore[assignment]
    # where token statistics (STEER, 80/20, HAPO, Lp-Reg, THR, ...) are taken: per micro-batch (reference),
    # per mini-batch or over the whole step batch, across ranks
    token_stat_scope: Literal["micro_batch", "mini_batch", "global"] = "micro_batch"

    def __post_init__(self):
        if self.kl is None:
            self.kl = KLConfig()
        if self.loss_agg not in LOSS_AGG_MODES:
            raise ValueError(f"unknown loss_agg '{self.loss_agg}'; choose one of {', '.join(LOSS_AGG_MODES)}")
        check_scope(self.token_stat_scope)
        adv = self.advantage
        if (getattr(adv.options, "multi_objective", None) == "normalize_then_sum" and self.kl.coef > 0
                and self.kl.placement == "reward"):
            raise ValueError(f"algorithm.advantage {adv.name}: multi_objective: normalize_then_sum normalises the "
                             f"per-function rewards, so the kl.placement: reward penalty would be ignored: use "
                             f"kl.placement: loss, or multi_objective: sum_then_normalize")


class Algorithm:
    """The composed parts of one algorithm. Holds no tensors; cross-step state lives in the parts."""

    def __init__(self, cfg: AlgorithmConfig):
        self.cfg = cfg
        self.advantage = ADVANTAGES.build(cfg.advantage.name, cfg.advantage.options)
        self.policy_loss = POLICY_LOSSES.build(cfg.policy_loss.name, cfg.policy_loss.options)
        self.token_weights = [TOKEN_WEIGHTS.build(p.name, p.options) for p in cfg.token_weights]
        self.regularizers = [REGULARIZERS.build(p.name, p.options) for p in cfg.regularizers]
        if cfg.kl.coef > 0 and cfg.kl.placement == "loss":
            self.regularizers.append(KLLoss(KLLossConfig(cfg.kl.coef, cfg.kl.estimator, cfg.kl.bias_correction)))
        parts_ = [self.advantage, self.policy_loss, *self.token_weights, *self.regularizers]
        self.needs: frozenset[str] = frozenset().union(*(getattr(p, "needs", frozenset()) for p in parts_))
        if cfg.kl.coef > 0:
            self.needs = self.needs | {"ref_logprobs"}
        for p in parts_:
            if hasattr(p, "scope"):
                p.scope = cfg.token_stat_scope
        self.kernel_options: dict = _merge_kernel_options(parts_)
        self.stats: StatRequest = stat_request(parts_, self.kernel_options, kl_to_reference=cfg.kl.coef > 0)
        _check_hapo_parts(self.policy_loss, self.token_weights)
        self._scope_kept: tuple[float, float] | None = None  # kept token / sequence fractions of the scope

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
        metrics["adv/nonzero_frac"] = nonzero_response_frac(adv, inputs.mask)
        return adv, metrics

    # ---- every micro-batch ---------------------------------------------------------------------------
    def prepare(self, inputs: LossInputs, all_reduce: AllReduce = local_all_reduce) -> None:
        """Store every part's token statistics over a whole scope (token_stat_scope mini_batch / global).

        `inputs`: no-grad LossInputs of all micro-batches of the scope (`logprobs` / `entropy` from a no-grad
        forward of the policy at the start of the scope). `all_reduce` combines statistics across data-parallel
        ranks (`torch.distributed.all_reduce` semantics; default: this process only). No-op for micro_batch.
        """
        if self.cfg.token_stat_scope == "micro_batch":
            return
        original = inputs.mask
        with torch.no_grad():
            _prepare_part(self.policy_loss, inputs, all_reduce)
            for w in self.token_weights:
                _prepare_part(w, inputs, all_reduce)
                _, new_mask, _ = w(inputs)
                if new_mask is not None:
                    inputs = inputs.with_mask(new_mask)
            for r in self.regularizers:
                _prepare_part(r, inputs, all_reduce)
            self._scope_kept = _kept_fractions(original, inputs.mask, all_reduce)

    def loss(self, inputs: LossInputs, norm: AggregationNorm | None = None) -> tuple[Tensor, Metrics]:
        """Scalar loss of one micro-batch and its metrics (see the module docstring for the order)."""
        loss, metrics = self.policy_loss(inputs)
        metrics = dict(metrics)
        original = inputs.mask
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
        if inputs.mask is not original:
            kept = _kept_fractions(original, inputs.mask) if self.cfg.token_stat_scope == "micro_batch" \
                else self._scope_kept
            if kept is None:
                raise RuntimeError(f"token_stat_scope is '{self.cfg.token_stat_scope}' but Algorithm.prepare() was "
                                   f"not called before the micro-batches")
            norm = _scale_norm(norm, *kept)
            metrics["agg/kept_token_frac"] = kept[0]
        if self.cfg.loss_agg == "seq-mean-token-sum-norm" and norm.norm_len is None:
            norm = replace(norm, norm_len=self.cfg.loss_agg_norm_len)
        total = aggregate_loss(loss, inputs.mask, self.cfg.loss_agg, norm)
        return total, metrics

    # ---- cross-step state ----------------------------------------------------------------------------
    def _loss_parts(self) -> dict[str, object]:
        named = {"policy_loss": self.policy_loss}
        named.update({f"token_weights.{i}": w for i, w in enumerate(self.token_weights)})
        named.update({f"regularizers.{i}": r for i, r in enumerate(self.regularizers)})
        return named

    def begin_update(self, rank: int = 0) -> None:
        """Called by the learner core before a rank's update: parts with per-rank state (Clip-Cov's random
        stream) switch to rank `rank`'s."""
        for p in self._loss_parts().values():
            if hasattr(p, "begin_update"):
                p.begin_update(rank)

    def state_dict(self) -> dict:
        """The advantage estimator's state and every loss part's that has one (checkpointed, and carried back
        from the DeepSpeed ranks after each update)."""
        loss_parts = {k: p.state_dict() for k, p in self._loss_parts().items() if hasattr(p, "state_dict")}
        return {"advantage": self.advantage.state_dict(), "parts": {k: v for k, v in loss_parts.items() if v}}

    def load_state_dict(self, state: dict) -> None:
        self.advantage.load_state_dict(state.get("advantage", {}))
        named = self._loss_parts()
        for key, part_state in state.get("parts", {}).items():
            if key not in named or not hasattr(named[key], "load_state_dict"):
                raise ValueError(f"the saved algorithm state has '{key}', which this recipe's algorithm lacks: "
                                 f"resume with the recipe the run was started with")
            named[key].load_state_dict(part_state)


def nonzero_response_frac(adv: Tensor, mask: Tensor) -> float:
    """Share of responses whose advantage is non-zero on at least one response token: the responses that carry a
    policy-gradient signal (the response utilisation ratio DCPO reports, arXiv 2509.02333). adv, mask: [B, T]."""
    used = ((adv != 0) & mask.bool()).any(dim=-1)  # [B]
    return used.double().mean().item() if len(used) else 0.0


def _reward_on_last_token(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence reward [B] on its last valid token -> [B, T] (verl's convention)."""
    out = torch.zeros_like(mask, dtype=rewards.dtype)
    last = (mask.sum(-1).long() - 1).clamp_min(0)
    out[torch.arange(len(rewards)), last] = rewards * (mask.sum(-1) > 0).to(rewards.dtype)
    return out


def _prepare_part(part, inputs: LossInputs, all_reduce: AllReduce) -> None:
    prepare = getattr(part, "prepare", None)
    if prepare is not None:
        prepare(inputs, all_reduce)


def _kept_fractions(original: Tensor, new: Tensor, all_reduce: AllReduce = local_all_reduce) -> tuple[float, float]:
    """Fractions of the originally valid tokens and non-empty sequences that a new mask keeps (1 when none)."""
    counts = torch.stack([original.ne(0).sum(), new.ne(0).sum(), (original.sum(-1) > 0).sum(),
                          (new.sum(-1) > 0).sum()]).to(torch.float64)
    n_tok, k_tok, n_seq, k_seq = all_reduce(counts, "sum").tolist()
    return (k_tok / n_tok if n_tok else 1.0), (k_seq / n_seq if n_seq else 1.0)


def _scale_norm(norm: AggregationNorm, token_frac: float, seq_frac: float) -> AggregationNorm:
    """Mini-batch normalisers of the kept tokens: num_tokens / num_seqs times the kept fractions (floored at 1)."""
    num_tokens = None if norm.num_tokens is None else max(norm.num_tokens * token_frac, 1.0)
    num_seqs = None if norm.num_seqs is None else max(norm.num_seqs * seq_frac, 1.0)
    return replace(norm, num_tokens=num_tokens, num_seqs=num_seqs)


def _merge_kernel_options(parts_: list) -> dict:
    """Union of the parts' `kernel_options`; two parts asking for different settings of one option is an error."""
    merged: dict = {}
    for p in parts_:
        for key, value in getattr(p, "kernel_options", {}).items():
            if key in merged and merged[key] != value:
                raise ValueError(f"two algorithm parts need different kernel option '{key}': {merged[key]} vs {value}")
            merged[key] = value
    return merged


def _check_hapo_parts(policy_loss, token_weights: list) -> None:
    """hapo_redistribution's neutral zone uses hapo_clip's adapted bounds: their shared options must agree."""
    if not isinstance(policy_loss, HapoClip):
        return
    shared = ("clip_low", "clip_high", "clip_alpha", "entropy_pivot", "hhat_sign")
    for w in token_weights:
        if isinstance(w, HapoRedistribution):
            diff = [f"{k}: {getattr(policy_loss.cfg, k)} vs {getattr(w.cfg, k)}" for k in shared
                    if getattr(policy_loss.cfg, k) != getattr(w.cfg, k)]
            if diff:
                raise ValueError("hapo_clip and hapo_redistribution must use the same " + ", ".join(diff) +
                                 "; set them equal in both YAML blocks")
