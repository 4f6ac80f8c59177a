"""Naive lm_head statistics: materialise the [N, V] logits and let autograd differentiate textbook formulas.

For tests (run in float64 as the reference of the other backends) and benchmarks (the "unfused" baseline of verl
and TRL) only: it holds several [N, V] tensors. It shares no code with the chunked and Triton paths, so it is
an independent check of their closed-form moments and hand-written backward passes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from creditrl.kernels.types import StatsPlan


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are upcast; outputs are never half)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _proxy_stats(z: Tensor, targets: Tensor, plan: StatsPlan) -> dict[str, Tensor]:
    """Lp-Reg proxy (algorithms-token-level.md §12.1), written like the reference `apply_min_p`."""
    cfg = plan.lp_reg
    t, tq = plan.temperature, plan.proxy_temperature
    a = z * t  # raw logits, [N, V]
    pi_th = torch.softmax(a.detach() / cfg.threshold_temperature, dim=-1)  # threshold distribution
    if cfg.rule == "minp":
        keep = pi_th >= cfg.threshold * pi_th.max(dim=-1, keepdim=True).values
    else:
        keep = pi_th >= cfg.threshold
    in_k = keep.gather(1, targets[:, None]).squeeze(1)
    zq = a / tq
    if cfg.soft:
        row_min = a.detach().min(dim=-1, keepdim=True).values / tq
        filled = torch.where(keep, zq.detach(), row_min)  # soft proxy statistics are detached
        log_q = torch.log_softmax(filled, dim=-1)
        return {
            "proxy_log_mass": torch.logsumexp(filled, dim=-1),
            "proxy_logp": log_q.gather(1, targets[:, None]).squeeze(1),
            "target_in_proxy": in_k,
        }
    masked = zq.masked_fill(~keep, -math.inf)
    mass = torch.logsumexp(masked, dim=-1)
    logq_y = zq.gather(1, targets[:, None]).squeeze(1) - mass
    q = torch.softmax(masked, dim=-1).detach()
    logp = torch.log_softmax(z, dim=-1)
    log_q = torch.log_softmax(masked.detach(), dim=-1)
    kl = torch.where(keep, q * (log_q - logp), torch.zeros_like(q)).sum(dim=-1)
    return {
        "proxy_log_mass": mass,
        "proxy_logp": torch.where(in_k, logq_y, torch.full_like(logq_y, -math.inf)),
        "target_in_proxy": in_k,
        "proxy_kl": kl,
    }


def naive_token_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, plan: StatsPlan,
    ref_hidden: Tensor | None = None, ref_weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """Statistics of `plan` for every row (no ignored rows here), by materialising z = hidden @ weight.T / T.

    Shapes: hidden [N, H], weight [V, H], targets [N] (valid ids), ref_hidden [N, H_r], ref_weight [V, H_r].
    Returns [N] tensors in float64 if any input is float64, else float32.
    """
    dt = compute_dtype(hidden, weight)
    z = (hidden.to(dt) @ weight.to(dt).T) / plan.temperature  # [N, V]
    logp_all = torch.log_softmax(z, dim=-1)  # [N, V]
    p = torch.softmax(z, dim=-1)  # [N, V]
    lse = torch.logsumexp(z, dim=-1)
    out: dict[str, Tensor] = {
        "logp": logp_all.gather(1, targets[:, None]).squeeze(1),
        "entropy": -(p * logp_all).sum(dim=-1),
        "lse": lse,
    }
    if plan.want_sum_p2:
        out["sum_p2"] = (p * p).sum(dim=-1)
        out["sum_p2_z"] = (p * p * z).sum(dim=-1)
    if plan.want_max:
        max_logit, argmax = z.detach().max(dim=-1)
        out["max_logit"], out["argmax"] = max_logit, argmax
    if plan.has_ref:
        with torch.no_grad():
            z_ref = (ref_hidden.to(dt) @ ref_weight.to(dt).T) / plan.temperature  # [N, V]
            logr = torch.log_softmax(z_ref, dim=-1)
        out["ref_kl"] = (logr.exp() * (logr - logp_all)).sum(dim=-1)  # KL(pi_ref || pi_theta), TDPO direction
    if plan.lp_reg is not None:
        out.update(_proxy_stats(z, targets, plan))
    return out
