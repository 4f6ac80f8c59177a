"""Loss aggregation: per-token loss [B, T] -> scalar (algorithms.md section 3).

With `S_i = sum_t m[i,t] L[i,t]`, `n_i = sum_t m[i,t]`, `N = sum_i n_i`:

    token-mean               sum_i S_i / N                               (DAPO token-level loss)
    token-sum                sum_i S_i                                   (verl 0.9.1; no normaliser)
    seq-mean-token-sum       sum_i S_i / B                               (B = sequences with n_i > 0)
    seq-mean-token-mean      sum_i [n_i>0] S_i / n_i / B                 (GRPO paper)
    seq-mean-token-sum-norm  sum_i S_i / (B * K)                         (Dr.GRPO, K = fixed max response length)
    only-token-mean          sum_i S_i / B                               (DCPO "OTM", = seq-mean-token-sum)

`token-sum` (verl 0.9.1 `agg_loss`: `dp_size * masked_sum`) has no normaliser, so its scale grows with the batch
and response length: size the learning rate (and `train.max_grad_norm`) for it. The learner's `world * loss` backward
under DeepSpeed's rank averaging makes it the sum over the whole mini-batch, as verl's dp factor does.

`AggregationNorm` supplies the mini-batch totals (N, B, K) so that the micro-batch losses of a mini-batch sum
to exactly the mini-batch loss; verl 0.9.1's engine path has the same semantics. Where a total is missing, the
micro-batch's own count is used. Deviation from verl, on purpose: `seq-mean-token-sum-norm` needs K
(`norm_len`) and raises without it, instead of silently using the padded width of the current tensor, which
changes with dynamic batching (algorithms.md section 3.1, "Follow").

`only-token-mean` is DCPO's name (arXiv 2509.02333): the paper's objective (1/G) sum_i sum_t, every token
weighted 1 and no length normalisation, i.e. seq-mean-token-sum over the mini-batch's sequences. Deviation
from the DCPO code, on purpose (algorithms-token-level.md section 10.3, "Follow: paper"): the code's OTM
depends on the micro-batch split (before commit 2778707 it carries an extra factor of the micro-batch's
sequence count; after it, it is the legacy per-micro-batch token mean).
"""

from __future__ import annotations

from torch import Tensor

from creditrl.algorithms.base import AggregationNorm

LOSS_AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
    "only-token-mean",
)


def aggregate_loss(loss: Tensor, mask: Tensor, mode: str, norm: AggregationNorm | None = None) -> Tensor:
    """Aggregate the per-token `loss` [B, T] under `mask` [B, T] into a scalar, as `mode` says."""
    norm = norm or AggregationNorm()
    seq_sum = (loss * mask).sum(dim=-1)  # [B]
    seq_len = mask.sum(dim=-1)  # [B]
    valid = (seq_len > 0).to(loss.dtype)  # [B]
    num_seqs = norm.num_seqs if norm.num_seqs is not None else valid.sum().clamp_min(1.0)
    if mode == "token-mean":
        num_tokens = norm.num_tokens if norm.num_tokens is not None else seq_len.sum().clamp_min(1.0)
        return seq_sum.sum() / num_tokens
    if mode == "token-sum":
        return seq_sum.sum()
    if mode in ("seq-mean-token-sum", "only-token-mean"):
        return (seq_sum * valid).sum() / num_seqs
    if mode == "seq-mean-token-mean":
        return (valid * seq_sum / seq_len.clamp_min(1.0)).sum() / num_seqs
    if mode == "seq-mean-token-sum-norm":
        if norm.norm_len is None:
            raise ValueError(
                "loss_agg 'seq-mean-token-sum-norm' (Dr.GRPO) needs a fixed normaliser: set "
                "algorithm.loss_agg_norm_len (usually rollout.max_new_tokens)"
            )
        return seq_sum.sum() / (num_seqs * norm.norm_len)
    raise ValueError(f"unknown loss aggregation '{mode}'; choose one of {', '.join(LOSS_AGG_MODES)}")
