"""Chunked torch lm_head statistics: the CPU path, the GPU fallback, and the readable reference design.

Forward, per chunk of C rows: z = (X_c @ W^T) / T in fp32 ([C, V]), then the row moments of
`creditrl.kernels.formulas` (max, sum e^u, ...). Only X, W, the targets and O(N) row moments are saved.
Backward, per chunk: recompute z identically, build the logit gradient
    dA = p (c0 + c1 u + c2 p + c3 p u) + cy 1[j=y] + cq q 1[K] + cr r
from the per-row coefficients, then dX_c = dA @ W and dW += dA^T @ X_c into an fp32 buffer (kernels.md §2.5).

Two [C, V] buffers are allocated once per call and reused by every chunk (in-place ops, `out=` GEMMs): fresh
large allocations cost page faults that are as expensive as the elementwise math on CPU. Chunk rows come from a
byte budget: rows = workspace_bytes // (LIVE_CHUNK_TENSORS * 4 * V). Multi-pass statistics (the Lp-Reg keep
set needs the row max first) are free here: the chunk's logits are in memory.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from creditrl.kernels.formulas import (
    LogitGradCoefficients, ProxyMoments, RowMoments, finalize, logit_grad_coefficients, output_grads, pack_outputs,
    proxy_threshold,
)
from creditrl.kernels.naive import compute_dtype
from creditrl.kernels.types import AUX_OUTPUTS, DIFF_OUTPUTS, StatsPlan

logger = logging.getLogger(__name__)

# [C, V] tensors alive at once (two reused buffers plus one temporary), to turn a byte budget into chunk rows.
LIVE_CHUNK_TENSORS = 3
DEFAULT_WORKSPACE_BYTES_CPU = 256 * 2**20
DEFAULT_WORKSPACE_BYTES_CUDA = 1024 * 2**20


def default_chunk_rows(n_rows: int, vocab: int, device: torch.device, workspace_bytes: int | None = None) -> int:
    """Rows per chunk so that LIVE_CHUNK_TENSORS fp32 [C, V] tensors fit in `workspace_bytes`."""
    if workspace_bytes is None:
        workspace_bytes = DEFAULT_WORKSPACE_BYTES_CUDA if device.type == "cuda" else DEFAULT_WORKSPACE_BYTES_CPU
    rows = workspace_bytes // (LIVE_CHUNK_TENSORS * 4 * max(vocab, 1))
    return int(max(1, min(rows, max(n_rows, 1))))


def _half_on_cuda(t: Tensor, dtype: torch.dtype) -> bool:
    return t.is_cuda and dtype == torch.float32 and t.dtype in (torch.bfloat16, torch.float16)


def operand(t: Tensor, dtype: torch.dtype) -> Tensor:
    """GEMM operand form of an input: bf16/fp16 stays half on CUDA (fp32-output GEMM), otherwise cast to `dtype`."""
    return t if _half_on_cuda(t, dtype) else t.to(dtype)


def matmul_fp32(a: Tensor, b: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """a @ b with fp32 (or float64) accumulation and output; never rounds the product to half (kernels.md §5.1).

    Half operands on CUDA go through `torch.mm(..., out_dtype=torch.float32)`; CPU has no such kernel, so
    callers pass operands already cast to `dtype` there (see `operand`). `out` is used when dtypes allow.
    """
    if a.dtype == b.dtype == dtype:
        return torch.mm(a, b, out=out) if out is not None else a @ b
    if a.dtype == b.dtype and _half_on_cuda(a, dtype):
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.to(dtype) @ b.to(dtype)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_j a_ij b_ij without a [C, V] temporary (batched GEMV).  [C, V], [C, V] -> [C]"""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _shifted_logits(x_c: Tensor, w_t: Tensor, plan: StatsPlan, dt: torch.dtype, out: Tensor) -> Tensor:
    """z = (x_c @ w_t) / T written into `out` when possible.  [C, H] x [H, V] -> [C, V]"""
    z = matmul_fp32(x_c, w_t, dt, out=out)
    if plan.temperature != 1.0:
        z.div_(plan.temperature)
    return z


class _Buffers:
    """Two [C, V] work buffers reused by every chunk of one forward or backward call."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        self.a = torch.empty(rows, vocab, dtype=dtype, device=device)
        self.b = torch.empty(rows, vocab, dtype=dtype, device=device)

    def take(self, rows: int) -> tuple[Tensor, Tensor]:
        return self.a[:rows], self.b[:rows]


def _chunk_moments(
    u: Tensor, tmp: Tensor, y: Tensor, plan: StatsPlan, ref_chunk
) -> tuple[RowMoments, ProxyMoments | None]:
    """Row moments of one chunk. `u` holds z on entry and z - m on exit; `tmp` is scratch.  [C, V]"""
    z_target = u.gather(1, y[:, None]).squeeze(1)
    m, argmax = u.max(dim=-1)  # [C]
    z_min = u.min(dim=-1).values if plan.lp_reg is not None and plan.lp_reg.soft else None
    u.sub_(m[:, None])
    e = torch.exp(u, out=tmp)
    mom = RowMoments(m=m, A=e.sum(-1), B=row_dot(e, u), z_target=z_target, z_min=z_min,
                     argmax=argmax if plan.want_max else None)
    if plan.want_sum_p2:
        e.mul_(e)  # e^{2u}
        mom.A2, mom.B2 = e.sum(-1), row_dot(e, u)
    if plan.lp_reg is not None and plan.lp_reg.rule == "fixed":
        mom.A_th = torch.mul(u, plan.temperature / plan.lp_reg.threshold_temperature, out=tmp).exp_().sum(-1)
    if ref_chunk is not None:
        z_r = ref_chunk()  # [C, V], a fresh tensor
        m_r = z_r.max(dim=-1).values
        z_r.sub_(m_r[:, None])
        e_r = torch.exp(z_r, out=tmp)
        mom.m_ref, mom.A_ref, mom.B_ref, mom.D_ref = m_r, e_r.sum(-1), row_dot(e_r, z_r), row_dot(e_r, u)
        del z_r
    pmom = None
    if plan.lp_reg is not None:
        delta = proxy_threshold(mom, plan)
        w, out_of_k = _proxy_weights(u, delta, plan.temperature / plan.proxy_temperature, tmp)
        pmom = ProxyMoments(A_q=w.sum(-1), B_q=row_dot(w, u), n_out=out_of_k.sum(-1).to(u.dtype))
    return mom, pmom


def _proxy_weights(u: Tensor, delta: Tensor, rho: float, out: Tensor) -> tuple[Tensor, Tensor]:
    """(e^{rho u} on the keep set K = {u >= delta} and 0 elsewhere, the mask of V \\ K).  [C, V]"""
    out_of_k = u < delta[:, None]
    w = torch.mul(u, rho, out=out).exp_().masked_fill_(out_of_k, 0.0)
    return w, out_of_k


def _cat(parts: list, cls: type):
    """Concatenate per-chunk RowMoments / ProxyMoments along rows."""
    return cls(**{n: (None if getattr(parts[0], n) is None else torch.cat([getattr(p, n) for p in parts]))
                  for n in cls.__dataclass_fields__})


def _rows(obj, sl: slice):
    """The rows `sl` of every [N] field of a moments / coefficients dataclass."""
    return type(obj)(**{n: (None if getattr(obj, n) is None else getattr(obj, n)[sl])
                        for n in type(obj).__dataclass_fields__})


def _chunk_logit_grad(
    u: Tensor, tmp: Tensor, y: Tensor, mom: RowMoments, pmom: ProxyMoments | None, co: LogitGradCoefficients,
    plan: StatsPlan, ref_chunk, terms: frozenset[str],
) -> Tensor:
    """dL/da of one chunk (formulas module docstring), written into the storage of `u` or `tmp`.  [C, V]

    With p = e^u / A, the main term is e^u (c0/A + (c1/A) u): three passes over the chunk (exp, addcmul, mul).
    `terms` names the optional terms with non-zero coefficients ("p2", "proxy", "ref"), which allocate.
    """
    col = lambda c: c[:, None]  # noqa: E731  [C] -> [C, 1]
    inv_a = 1.0 / mom.A
    e = torch.exp(u, out=tmp)  # e^u; p = e / A
    extra = None
    if "p2" in terms:  # p^2 (c2 + c3 u)
        p = e * col(inv_a)
        extra = (col(co.c2) + col(co.c3) * u) * p * p
    if "proxy" in terms:  # cq q 1[K], q = e^{rho u} / A_q on K
        w, _ = _proxy_weights(u, proxy_threshold(mom, plan), plan.temperature / plan.proxy_temperature,
                              torch.empty_like(u))
        w.mul_(col(co.cq / pmom.A_q))
        extra = w if extra is None else extra.add_(w)
    if bool((co.c1 != 0).any()):
        grad = torch.addcmul(col(co.c0 * inv_a), col(co.c1 * inv_a), u, out=u).mul_(e)  # p (c0 + c1 u)
    else:
        grad = e.mul_(col(co.c0 * inv_a))  # p c0
    if extra is not None:
        grad.add_(extra)
    grad.scatter_add_(1, y[:, None], co.cy[:, None])
    if "ref" in terms:  # cr r, r = exp(z_r - m_r - log A_r)
        z_r = ref_chunk()
        grad.add_(z_r.sub_(col(mom.m_ref + torch.log(mom.A_ref))).exp_().mul_(col(co.cr)))
    return grad


class _ChunkedTokenStats(torch.autograd.Function):
    """autograd.Function over (hidden, weight, targets, ref_hidden, ref_weight); see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ref_hidden, ref_weight, plan: StatsPlan, chunk_rows: int):
        n, vocab = hidden.shape[0], weight.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            dt = compute_dtype(hidden, weight)
            w_t = operand(weight, dt).T  # [H, V]
            wr_t = operand(ref_weight, dt).T if plan.has_ref else None
            bufs = _Buffers(min(chunk_rows, n), vocab, dt, hidden.device)
            moms, pmoms = [], []
            for start in range(0, n, chunk_rows):
                sl = slice(start, start + chunk_rows)
                z, tmp = bufs.take(targets[sl].shape[0])
                z = _shifted_logits(operand(hidden[sl], dt), w_t, plan, dt, out=z)
                ref_chunk = None
                if plan.has_ref:
                    ref_chunk = lambda sl=sl: _shifted_logits(  # noqa: E731
                        operand(ref_hidden[sl], dt), wr_t, plan, dt, out=torch.empty_like(tmp))
                mom, pmom = _chunk_moments(z, tmp, targets[sl], plan, ref_chunk)
                moms.append(mom)
                pmoms.append(pmom)
            del bufs
            mom = _cat(moms, RowMoments)
            pmom = _cat(pmoms, ProxyMoments) if plan.lp_reg is not None else None
            stats = finalize(mom, pmom, plan)

        ctx.plan, ctx.chunk_rows, ctx.mom, ctx.pmom = plan, chunk_rows, mom, pmom
        ctx.save_for_backward(hidden, weight, targets, ref_hidden, ref_weight)
        return pack_outputs(ctx, stats, plan, hidden.new_zeros(0, dtype=dt))

    @staticmethod
    def backward(ctx, *grad_outputs):
        hidden, weight, targets, ref_hidden, ref_weight = ctx.saved_tensors
        plan, chunk_rows, mom, pmom = ctx.plan, ctx.chunk_rows, ctx.mom, ctx.pmom
        grads = output_grads(grad_outputs)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not grads or not (need_x or need_w):
            return None, None, None, None, None, None, None
        n, vocab = hidden.shape[0], weight.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            dt = compute_dtype(hidden, weight)
            co = logit_grad_coefficients(grads, mom, pmom, plan)
            terms = frozenset(name for name, c in (("p2", co.c3 if plan.want_sum_p2 else None),
                                                   ("p2", co.c2 if plan.want_sum_p2 else None),
                                                   ("proxy", co.cq if plan.lp_reg is not None else None),
                                                   ("ref", co.cr if plan.has_ref else None))
                              if c is not None and bool((c != 0).any()))
            w_op = operand(weight, dt)  # [V, H]
            wr_t = operand(ref_weight, dt).T if plan.has_ref else None
            d_hidden = torch.empty(hidden.shape, dtype=dt, device=hidden.device) if need_x else None
            d_weight = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
            bufs = _Buffers(min(chunk_rows, n), vocab, dt, hidden.device)
            for start in range(0, n, chunk_rows):
                sl = slice(start, start + chunk_rows)
                x_c = operand(hidden[sl], dt)
                u, tmp = bufs.take(x_c.shape[0])
                u = _shifted_logits(x_c, w_op.T, plan, dt, out=u).sub_(mom.m[sl, None])  # as in the forward
                ref_chunk = None
                if "ref" in terms:
                    ref_chunk = lambda sl=sl: _shifted_logits(  # noqa: E731
                        operand(ref_hidden[sl], dt), wr_t, plan, dt, out=torch.empty_like(tmp))
                grad = _chunk_logit_grad(u, tmp, targets[sl], _rows(mom, sl),
                                         _rows(pmom, sl) if pmom is not None else None, _rows(co, sl),
                                         plan, ref_chunk, terms)
                grad = grad.to(x_c.dtype)  # half only as a GEMM operand on CUDA (fp32 accumulation and output)
                if need_x:
                    d_hidden[sl] = matmul_fp32(grad, w_op, dt, out=d_hidden[sl] if grad.dtype == dt else None)
                if need_w:
                    if grad.dtype == dt:
                        d_weight.addmm_(grad.T, x_c)  # [V, H] += [V, C] @ [C, H]
                    else:
                        d_weight += matmul_fp32(grad.T, x_c, dt)
            del bufs
        return (d_hidden.to(hidden.dtype) if need_x else None, d_weight.to(weight.dtype) if need_w else None,
                None, None, None, None, None)


def chunked_token_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, plan: StatsPlan,
    ref_hidden: Tensor | None = None, ref_weight: Tensor | None = None,
    chunk_size: int | None = None, workspace_bytes: int | None = None,
) -> dict[str, Tensor]:
    """Statistics of `plan` with autograd, holding at most a few [chunk_size, V] blocks of logits at a time.

    Shapes: hidden [N, H], weight [V, H], targets [N] (valid ids), ref_hidden [N, H_r], ref_weight [V, H_r].
    Returns [N] tensors (fp32, or float64 for float64 inputs), keyed by output name.
    """
    rows = chunk_size or default_chunk_rows(hidden.shape[0], weight.shape[0], hidden.device, workspace_bytes)
    ref_h = ref_hidden.detach() if ref_hidden is not None else None
    ref_w = ref_weight.detach() if ref_weight is not None else None
    outs = _ChunkedTokenStats.apply(hidden, weight, targets, ref_h, ref_w, plan, rows)
    named = dict(zip(DIFF_OUTPUTS + AUX_OUTPUTS, outs))
    return {name: named[name] for name in plan.output_names()}
