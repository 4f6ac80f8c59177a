"""Per-token statistics of a pair micro-batch: policy log-probs, reference log-probs, full-vocab KL, cDPO scores.

Everything goes through `creditrl.kernels.linear_token_stats` on the hidden states that predict response tokens
([N, H]); no [N, V] logits are materialised:

    policy:    logp_t and (TDPO / KL metrics) ref_kl_t = KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) via ref=(h_ref, W_ref)
    reference: ref_logp_t (no grad)
    cDPO:      ce_logp_t = log softmax((1+β_CE) z_pos − β_CE z_neg)[y_t]. The contrastive logits are one GEMM of
               the concatenated hidden states [(1+β_CE) h_pos, −β_CE h_neg] with the concatenated heads
               [W_pos, W_neg], so the same op computes them exactly.

Reference-side quantities are constants of each sequence; `ReferenceStats` computes them once per sequence
and caches them when asked ("precomputed reference statistics": ref_logp [n], and for the KL also the
reference hidden states [n, H_r], so the reference model is not run again for a sequence seen before).

Both learner shells call `pair_token_stats` on their policy (the DeepSpeed rank from inside its engine's
forward, so ZeRO-3's parameter hooks see it); the preference step itself is `creditrl/learner/preference.py`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from creditrl.kernels import linear_token_stats
from creditrl.learner.batch import MicroBatch, model_inputs, scatter_tokens
from creditrl.learner.token_stats import decoder_and_head


def response_hidden(model, mb: MicroBatch, autocast_bf16: bool = False) -> Tensor:
    """Hidden states [N, H] that predict the response tokens of the micro-batch (decoder body only)."""
    decoder, _ = decoder_and_head(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
        hidden = decoder(**model_inputs(mb, decoder)).last_hidden_state  # [r, L, H]
    return mb.gather(hidden)


def head_weight(model) -> Tensor:
    return decoder_and_head(model)[1].weight


def contrastive_token_logp(h_pos: Tensor, w_pos: Tensor, h_neg: Tensor, w_neg: Tensor, targets: Tensor,
                           beta_ce: float = 1.0) -> Tensor:
    """log softmax((1+β_CE) h_pos W_posᵀ − β_CE h_neg W_negᵀ)[y_t]: [N], via one fused-op call.

    The contrastive logits equal [(1+β_CE) h_pos, −β_CE h_neg] @ [W_pos, W_neg]ᵀ (concatenated along the hidden
    axis), so no [N, V] tensor is materialised.
    """
    hidden = torch.cat([(1.0 + beta_ce) * h_pos, -beta_ce * h_neg], dim=1)  # [N, H_pos + H_neg]
    weight = torch.cat([w_pos, w_neg], dim=1)  # [V, H_pos + H_neg]
    return linear_token_stats(hidden, weight, targets, want=("logp",)).logp


@torch.no_grad()
def contrastive_logp(pos_model, neg_model, mb: MicroBatch, beta_ce: float = 1.0) -> Tensor:
    """cDPO token scores of the micro-batch tokens from the positive and negative models: [N]."""
    return contrastive_token_logp(response_hidden(pos_model, mb).float(), head_weight(pos_model).float(),
                                  response_hidden(neg_model, mb).float(), head_weight(neg_model).float(),
                                  mb.targets, beta_ce)


@dataclass
class SequenceRef:
    """Constant statistics of one response: reference log-probs, reference hidden states, cDPO scores."""

    logp: Tensor  # [n]
    hidden: Tensor | None  # [n, H_r] (only when the KL is needed)
    ce_logp: Tensor | None  # [n] (only for cDPO)


class ReferenceStats:
    """Reference-side statistics of sequences, computed on demand and cached by sequence key when `cache`.

    `reference` returns a context manager yielding the reference model (a frozen copy, or the policy with its
    LoRA adapter disabled). `contrastive` is (positive model, negative model, β_CE) for cDPO, else None.
    `copy_head`: keep a private copy of the reference lm_head weight (taken once; the reference is frozen) for
    the KL of later, cached micro-batches. Needed when the reference is the ZeRO-3 partitioned policy, whose
    gathered weight is released after the forward; otherwise the weight itself is kept (no copy).
    """

    def __init__(self, reference: Callable[[], AbstractContextManager], need_hidden: bool, cache: bool,
                 contrastive: tuple | None = None, autocast_bf16: bool = False, copy_head: bool = False):
        self.reference, self.need_hidden, self.cache = reference, need_hidden, cache
        self.contrastive, self.autocast_bf16, self.copy_head = contrastive, autocast_bf16, copy_head
        self._store: dict[str, SequenceRef] = {}
        self.ref_weight: Tensor | None = None

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def _compute(self, mb: MicroBatch) -> list[SequenceRef]:
        with self.reference() as ref:
            h_ref = response_hidden(ref, mb, self.autocast_bf16).float()  # [N, H_r]
            weight = head_weight(ref).detach()
            if self.ref_weight is None:
                self.ref_weight = weight.clone() if self.copy_head else weight
            logp = linear_token_stats(h_ref, weight, mb.targets, want=("logp",)).logp
        ce = None
        if self.contrastive is not None:
            pos, neg, beta_ce = self.contrastive
            ce = contrastive_logp(pos, neg, mb, beta_ce)
        counts = mb.mask.sum(-1).long().tolist()
        hs = torch.split(h_ref, counts) if self.need_hidden else [None] * len(counts)
        ces = torch.split(ce, counts) if ce is not None else [None] * len(counts)
        return [SequenceRef(lp.clone(), None if h is None else h.clone(), None if c is None else c.clone())
                for lp, h, c in zip(torch.split(logp, counts), hs, ces)]

    def lookup(self, mb: MicroBatch, keys: list[str]) -> SequenceRef:
        """The micro-batch's reference statistics concatenated in token order ([N], [N, H_r], [N])."""
        if self.cache and all(k in self._store for k in keys):
            seqs = [self._store[k] for k in keys]
        else:
            seqs = self._compute(mb)
            if self.cache:
                self._store.update(zip(keys, seqs))
        return SequenceRef(
            logp=torch.cat([s.logp for s in seqs]),
            hidden=torch.cat([s.hidden for s in seqs]) if self.need_hidden else None,
            ce_logp=torch.cat([s.ce_logp for s in seqs]) if self.contrastive is not None else None,
        )


def pair_token_stats(policy, mb: MicroBatch, keys: list[str], refs: ReferenceStats, want_kl: bool,
                     autocast_bf16: bool = False) -> dict[str, Tensor]:
    """Response-aligned [2b, T] fp32 tensors: logp (grad), ref_logp, ref_kl (grad; when `want_kl`), ce_logp."""
    ref = refs.lookup(mb, keys)
    h = response_hidden(policy, mb, autocast_bf16)  # [N, H]
    weight = head_weight(policy)
    ref_pair = None
    if want_kl:
        ref_weight = refs.ref_weight if refs.ref_weight is not None else weight.detach()
        ref_pair = (ref.hidden.to(h.dtype), ref_weight.to(weight.dtype))
    stats = linear_token_stats(h, weight, mb.targets, want=("logp",) + (("ref_kl",) if want_kl else ()),
                               ref=ref_pair)
    out = {"logp": scatter_tokens(stats.logp.float(), mb), "ref_logp": scatter_tokens(ref.logp.float(), mb)}
    if want_kl:
        out["ref_kl"] = scatter_tokens(stats.ref_kl.float(), mb)
    if ref.ce_logp is not None:
        out["ce_logp"] = scatter_tokens(ref.ce_logp.float(), mb)
    return out


def frozen_reference(model) -> Callable[[], AbstractContextManager]:
    """A reference given as a separate frozen model."""
    return lambda: nullcontext(model)


def adapter_disabled_reference(peft_model) -> Callable[[], AbstractContextManager]:
    """The LoRA reference: the policy with its adapter disabled (the base model)."""

    class _Disabled(AbstractContextManager):
        def __enter__(self):
            self._ctx = peft_model.disable_adapter()
            self._ctx.__enter__()
            return peft_model

        def __exit__(self, *exc):
            return self._ctx.__exit__(*exc)

    return _Disabled
