"""Chunked torch lm_head statistics: the CPU path, the GPU fallback, and the readable reference design.

Forward, per chunk of C rows: z = (X_c @ W^T) / T in fp32 ([C, V], the only large temporary), then the row
moments of `creditrl.kernels.formulas` (max, sum e^u, ...). Only X, W, the targets and O(N) row moments are
saved. Backward, per chunk: recompute z bitwise identically, build the logit gradient
dA = p (c0 + c1 u + c2 p + c3 p u) + cy 1[j=y] + cq q 1[K] + cr r from the per-row coefficients, then
dX_c = dA @ W and dW += dA^T @ X_c into an fp32 buffer (spec kernels.md §2.5).

The chunk is sized from a byte budget: rows = workspace_bytes // (LIVE_CHUNK_TENSORS * 4 * V).
Multi-pass statistics (the Lp-Reg keep set needs the row max first) are free: the chunk's logits are in memory.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from creditrl.kernels.formulas import (
    LogitGradCoefficients, ProxyMoments, RowMoments, finalize, logit_grad_coefficients, proxy_threshold,
)
from creditrl.kernels.naive import compute_dtype
from creditrl.kernels.types import AUX_OUTPUTS, DIFF_OUTPUTS, StatsPlan

logger = logging.getLogger(__name__)

# [C, V] tensors alive at once in the backward (z/u, p, dA), used to turn a byte budget into chunk rows.
LIVE_CHUNK_TENSORS = 3
DEFAULT_WORKSPACE_BYTES_CPU = 128 * 2**20
DEFAULT_WORKSPACE_BYTES_CUDA = 1024 * 2**20


def default_chunk_rows(n_rows: int, vocab: int, device: torch.device, workspace_bytes: int | None = None) -> int:
    """Rows per chunk so that LIVE_CHUNK_TENSORS fp32 [C, V] tensors fit in `workspace_bytes`."""
    if workspace_bytes is None:
        workspace_bytes = DEFAULT_WORKSPACE_BYTES_CUDA if device.type == "cuda" else DEFAULT_WORKSPACE_BYTES_CPU
    rows = workspace_bytes // (LIVE_CHUNK_TENSORS * 4 * max(vocab, 1))
    return int(max(1, min(rows, max(n_rows, 1))))


def matmul_fp32(x: Tensor, w_t: Tensor, dtype: torch.dtype) -> Tensor:
    """x @ w_t with fp32 (or float64) accumulation and output; half operands stay half on CUDA.

    Never rounds the product to bf16 (kernels.md §5.1). On CUDA, bf16/fp16 operands go through
    `torch.mm(..., out_dtype=torch.float32)`; elsewhere (CPU has no such kernel) they are upcast first.
    """
    if x.dtype == w_t.dtype == dtype:
        return x @ w_t
    if x.is_cuda and dtype == torch.float32 and x.dtype == w_t.dtype and x.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(x, w_t, out_dtype=torch.float32)
    return x.to(dtype) @ w_t.to(dtype)


def _operand(t: Tensor, dtype: torch.dtype) -> Tensor:
    """The GEMM operand form of an input: half stays half on CUDA (fp32-output GEMM), otherwise `dtype`."""
    if t.is_cuda and dtype == torch.float32 and t.dtype in (torch.bfloat16, torch.float16):
        return t
    return t.to(dtype)


def _chunk_moments(z: Tensor, y: Tensor, plan: StatsPlan, z_ref: Tensor | None) -> RowMoments:
    """Row moments of one chunk of scaled logits z [C, V] (and reference logits z_ref [C, V])."""
    m, argmax = z.max(dim=-1)  # [C]
    u = z - m[:, None]  # [C, V]
    e = torch.exp(u)
    mom = RowMoments(m=m, A=e.sum(-1), B=(e * u).sum(-1), z_target=z.gather(1, y[:, None]).squeeze(1))
    if plan.want_sum_p2:
        e2 = e * e
        mom.A2, mom.B2 = e2.sum(-1), (e2 * u).sum(-1)
    if plan.want_max:
        mom.argmax = argmax
    if plan.lp_reg is not None and plan.lp_reg.soft:
        mom.z_min = z.min(dim=-1).values
    if plan.lp_reg is not None and plan.lp_reg.rule == "fixed":
        mom.A_th = torch.exp(u * (plan.temperature / plan.lp_reg.threshold_temperature)).sum(-1)
    if z_ref is not None:
        m_r = z_ref.max(dim=-1).values
        u_r = z_ref - m_r[:, None]
        e_r = torch.exp(u_r)
        mom.m_ref, mom.A_ref, mom.B_ref, mom.D_ref = m_r, e_r.sum(-1), (e_r * u_r).sum(-1), (e_r * u).sum(-1)
    return mom


def _proxy_weights(u: Tensor, delta: Tensor, rho: float) -> Tensor:
    """e^{rho u} on the keep set K = {u >= delta}, 0 elsewhere.  [C, V]"""
    return torch.where(u >= delta[:, None], torch.exp(rho * u), torch.zeros((), dtype=u.dtype, device=u.device))


def _chunk_proxy_moments(z: Tensor, mom: RowMoments, plan: StatsPlan) -> ProxyMoments:
    u = z - mom.m[:, None]
    delta = proxy_threshold(mom, plan)
    w = _proxy_weights(u, delta, plan.temperature / plan.proxy_temperature)
    n_out = (u < delta[:, None]).sum(-1).to(z.dtype)
    return ProxyMoments(A_q=w.sum(-1), B_q=(w * u).sum(-1), n_out=n_out)


def _cat_moments(parts: list, cls: type) -> object:
    """Concatenate per-chunk RowMoments / ProxyMoments along rows."""
    names = cls.__dataclass_fields__.keys()
    return cls(**{n: (torch.cat([getattr(p, n) for p in parts]) if getattr(parts[0], n) is not None else None)
                  for n in names})


def _slice_moments(mom: RowMoments | ProxyMoments, sl: slice) -> RowMoments | ProxyMoments:
    return type(mom)(**{n: (None if getattr(mom, n) is None else getattr(mom, n)[sl])
                        for n in type(mom).__dataclass_fields__})


def _chunk_logit_grad(
    z: Tensor, y: Tensor, mom: RowMoments, pmom: ProxyMoments | None, co: LogitGradCoefficients,
    plan: StatsPlan, z_ref: Tensor | None,
) -> Tensor:
    """dL/da for one chunk (formulas module docstring).  z [C, V] -> [C, V]"""
    u = z - mom.m[:, None]
    p = torch.exp(u - torch.log(mom.A)[:, None])
    col = lambda c: c[:, None]  # noqa: E731  [C] -> [C, 1]
    grad = p * (col(co.c0) + col(co.c1) * u + (col(co.c2) + col(co.c3) * u) * p)
    grad.scatter_add_(1, y[:, None], co.cy[:, None])
    if plan.lp_reg is not None and bool((co.cq != 0).any()):
        rho = plan.temperature / plan.proxy_temperature
        w = _proxy_weights(u, proxy_threshold(mom, plan), rho)
        grad += col(co.cq / pmom.A_q) * w
    if z_ref is not None and bool((co.cr != 0).any()):
        r = torch.exp(z_ref - (mom.m_ref + torch.log(mom.A_ref))[:, None])
        grad += col(co.cr) * r
    return grad


class _ChunkedTokenStats(torch.autograd.Function):
    """autograd.Function over (hidden, weight, targets, ref_hidden, ref_weight); see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ref_hidden, ref_weight, plan: StatsPlan, chunk_rows: int):
        with torch.autocast(hidden.device.type, enabled=False):
            dt = compute_dtype(hidden, weight)
            w_t = _operand(weight, dt).T  # [H, V]
            wr_t = _operand(ref_weight, dt).T if plan.has_ref else None
            n = hidden.shape[0]
            moms, pmoms = [], []
            for start in range(0, n, chunk_rows):
                sl = slice(start, start + chunk_rows)
                z = matmul_fp32(_operand(hidden[sl], dt), w_t, dt) / plan.temperature  # [C, V]
                z_ref = (matmul_fp32(_operand(ref_hidden[sl], dt), wr_t, dt) / plan.temperature
                         if plan.has_ref else None)
                mom = _chunk_moments(z, targets[sl], plan, z_ref)
                moms.append(mom)
                if plan.lp_reg is not None:
                    pmoms.append(_chunk_proxy_moments(z, mom, plan))
                del z, z_ref
            mom = _cat_moments(moms, RowMoments)
            pmom = _cat_moments(pmoms, ProxyMoments) if plan.lp_reg is not None else None
            stats = finalize(mom, pmom, plan)

        ctx.plan, ctx.chunk_rows = plan, chunk_rows
        ctx.mom, ctx.pmom = mom, pmom
        ctx.save_for_backward(hidden, weight, targets, ref_hidden, ref_weight)
        empty = hidden.new_zeros(0, dtype=dt)
        diff = tuple(stats.get(name, empty) for name in DIFF_OUTPUTS)
        aux = tuple(stats.get(name, empty) for name in AUX_OUTPUTS)
        ctx.mark_non_differentiable(*aux)
        ctx.set_materialize_grads(False)
        return diff + aux

    @staticmethod
    def backward(ctx, *grad_outputs):
        hidden, weight, targets, ref_hidden, ref_weight = ctx.saved_tensors
        plan, chunk_rows, mom, pmom = ctx.plan, ctx.chunk_rows, ctx.mom, ctx.pmom
        grads = {name: g for name, g in zip(DIFF_OUTPUTS, grad_outputs) if g is not None and g.numel() > 0}
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not grads or not (need_x or need_w):
            return None, None, None, None, None, None, None
        with torch.autocast(hidden.device.type, enabled=False):
            dt = compute_dtype(hidden, weight)
            co = logit_grad_coefficients(grads, mom, pmom, plan)
            w_op = _operand(weight, dt)  # [V, H]
            wr_t = _operand(ref_weight, dt).T if plan.has_ref else None
            d_hidden = torch.empty(hidden.shape, dtype=dt, device=hidden.device) if need_x else None
            d_weight = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
            for start in range(0, hidden.shape[0], chunk_rows):
                sl = slice(start, start + chunk_rows)
                x_c = _operand(hidden[sl], dt)
                z = matmul_fp32(x_c, w_op.T, dt) / plan.temperature  # [C, V], identical to the forward
                z_ref = matmul_fp32(_operand(ref_hidden[sl], dt), wr_t, dt) / plan.temperature if plan.has_ref else None
                co_c = LogitGradCoefficients(**{k: v[sl] for k, v in vars(co).items()})
                pm_c = _slice_moments(pmom, sl) if pmom is not None else None
                grad = _chunk_logit_grad(z, targets[sl], _slice_moments(mom, sl), pm_c, co_c, plan, z_ref)
                del z, z_ref
                grad = grad.to(x_c.dtype)  # half only as a GEMM operand on CUDA (fp32 accumulation and output)
                if need_x:
                    d_hidden[sl] = matmul_fp32(grad, w_op, dt)  # [C, H]
                if need_w:
                    if grad.dtype == dt:
                        d_weight.addmm_(grad.T, x_c)  # [V, H] += [V, C] @ [C, H]
                    else:
                        d_weight += matmul_fp32(grad.T, x_c, dt)
                del grad
        d_hidden = d_hidden.to(hidden.dtype) if need_x else None
        d_weight = d_weight.to(weight.dtype) if need_w else None
        return d_hidden, d_weight, None, None, None, None, None


def chunked_token_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, plan: StatsPlan,
    ref_hidden: Tensor | None = None, ref_weight: Tensor | None = None,
    chunk_size: int | None = None, workspace_bytes: int | None = None,
) -> dict[str, Tensor]:
    """Statistics of `plan` with autograd, holding at most one [chunk_size, V] block of logits at a time.

    Shapes: hidden [N, H], weight [V, H], targets [N] (valid ids), ref_hidden [N, H_r], ref_weight [V, H_r].
    Returns [N] tensors (fp32, or float64 for float64 inputs), keyed by output name.
    """
    rows = chunk_size or default_chunk_rows(hidden.shape[0], weight.shape[0], hidden.device, workspace_bytes)
    ref_h = ref_hidden.detach() if ref_hidden is not None else None
    ref_w = ref_weight.detach() if ref_weight is not None else None
    outs = _ChunkedTokenStats.apply(hidden, weight, targets, ref_h, ref_w, plan, rows)
    named = dict(zip(DIFF_OUTPUTS + AUX_OUTPUTS, outs))
    return {name: named[name] for name in plan.output_names()}
