"""The interfaces every algorithm part implements, and the tensors they see.

An algorithm is composed from parts (see `creditrl/algorithms/compose.py`):

    advantage estimator  ->  A[i, t]                           (once per step, no grad)
    policy loss          ->  L[i, t]      per-token loss         (every micro-batch, with grad)
    token weights        ->  L[i, t] *= w[i, t]  (+ optional new aggregation mask)
    regularisers         ->  L[i, t]  <- f(L, inputs)            (entropy bonus, KL loss, Lp-Reg, ...)
    aggregation          ->  scalar loss (token-mean, seq-mean-token-sum, ...)

Shapes: `B` responses in the (micro-)batch, `T` padded response length. All per-token tensors are aligned with
the response tokens: position `t` holds the statistic of response token `t` given the prompt and tokens `< t`.
`mask[i, t]` is 1 for real response tokens and 0 for padding.

Parts declare in `needs` which optional per-token statistics they read, so the learner computes only those
(entropy and the other full-vocabulary statistics go through `creditrl.kernels`). Names in use:

    "entropy"          H_t of the current policy, differentiable           -> LossInputs.entropy
    "old_entropy"      H_t of pi_old from the old-log-prob pass, no grad    -> LossInputs.old_entropy
    "ref_logprobs"     log pi_ref(y_t), no grad                            -> LossInputs.ref_logprobs
    "rollout_logprobs" the sampler's log mu(y_t), no grad                  -> LossInputs.rollout_logprobs
    other names        extra statistics, see `LossInputs.extras`
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from torch import Tensor

Metrics = dict[str, Tensor | float]


@dataclass
class AdvantageInputs:
    """What an advantage estimator sees for one step (the whole global batch of responses)."""

    rewards: Tensor  # [B] float64/float32 sequence reward R_i (after any reward shaping)
    group_ids: Tensor  # [B] long; responses to the same prompt share a group id
    mask: Tensor  # [B, T] float response mask
    prompt_keys: list[str]  # [B] stable key of the prompt in the dataset (cross-step state, e.g. DCPO SAS)
    token_rewards: Tensor | None = None  # [B, T] per-token rewards (e.g. reward minus KL-in-reward penalty)
    old_logprobs: Tensor | None = None  # [B, T]
    old_entropy: Tensor | None = None  # [B, T]
    # per-reward-function rewards, for grpo multi_objective: normalize_then_sum (None when the trainer has none):
    reward_components: Tensor | None = None  # [B, K] unweighted reward of each of the K functions of reward.fns
    reward_weights: Tensor | None = None  # [K] their weights (reward.fns[k].weight), in the same order
    values: Tensor | None = None  # [B, T] the critic's values V_t of pi_old's states (GAE; None without a critic)


@dataclass
class LossInputs:
    """Per-token tensors of one micro-batch, as seen by policy losses, token weights and regularisers."""

    logprobs: Tensor  # [B, T] log pi_theta(y_t), requires grad
    old_logprobs: Tensor  # [B, T] log pi_old(y_t), no grad
    advantages: Tensor  # [B, T] no grad
    mask: Tensor  # [B, T] float {0, 1}
    entropy: Tensor | None = None  # [B, T] H_t of pi_theta (grad flows through it)
    old_entropy: Tensor | None = None  # [B, T]
    ref_logprobs: Tensor | None = None  # [B, T]
    rollout_logprobs: Tensor | None = None  # [B, T]
    group_ids: Tensor | None = None  # [B]
    extras: dict[str, Tensor] = field(default_factory=dict)  # e.g. "old_minp_logprobs": [B, T]

    def with_mask(self, mask: Tensor) -> "LossInputs":
        return replace(self, mask=mask)


@dataclass
class AggregationNorm:
    """Global normalisers of the mini-batch that a micro-batch belongs to.

    With these, summing the micro-batch losses gives exactly the mini-batch loss (verl's engine-path semantics,
    algorithms.md section 3.1): `num_tokens` = valid tokens of the whole mini-batch (all ranks), `num_seqs` =
    sequences of the mini-batch (all ranks), `norm_len` = the fixed Dr.GRPO normaliser (max response length).
    When a field is None, the micro-batch's own count is used (local semantics).
    """

    num_tokens: float | None = None
    num_seqs: float | None = None
    norm_len: float | None = None


@runtime_checkable
class AdvantageEstimator(Protocol):
    needs: frozenset[str]

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        """Return advantages [B, T] (already multiplied by the mask) and metrics."""
        ...

    def state_dict(self) -> dict:
        """Cross-step state (saved in checkpoints); {} for stateless estimators."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class PolicyLoss(Protocol):
    needs: frozenset[str]

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        """Return the per-token loss L[i, t] ([B, T], to be minimised) and metrics."""
        ...


@runtime_checkable
class TokenWeight(Protocol):
    needs: frozenset[str]

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        """Return (weights [B, T] detached, new aggregation mask [B, T] or None, metrics).

        The weights multiply the per-token policy loss. A new mask replaces `inputs.mask` for aggregation and for
        the parts after this one (tokens dropped from the loss *and* from the denominator, e.g. 80/20 selection).
        """
        ...


@runtime_checkable
class Regularizer(Protocol):
    needs: frozenset[str]

    def __call__(self, inputs: LossInputs, loss: Tensor) -> tuple[Tensor, Metrics]:
        """Take the per-token loss [B, T] and return the regularised per-token loss [B, T] and metrics.

        Additive terms (entropy bonus, KL loss) return `loss + coef * term`; Lp-Reg replaces the loss on the
        tokens it selects.
        """
        ...


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` over positions where `mask` is 1; 0 when the mask is empty."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def stateless(cls):
    """Class decorator giving a stateless part empty `state_dict` / `load_state_dict`."""
    cls.state_dict = lambda self: {}
    cls.load_state_dict = lambda self, state: None
    return cls


__all__ = [
    "AdvantageEstimator",
    "AdvantageInputs",
    "AggregationNorm",
    "LossInputs",
    "Metrics",
    "PolicyLoss",
    "Regularizer",
    "TokenWeight",
    "masked_mean",
    "stateless",
]
