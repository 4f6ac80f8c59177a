"""Launch code and autograd.Function of the Triton lm_head statistics op (spec kernels.md §3).

Forward: `_stats_fwd_kernel` over (row blocks x fixed-width vocab splits) -> partials -> `_merge_splits_kernel`
(fixed order) -> row moments -> `formulas.finalize`. With Lp-Reg, a second sweep (`_proxy_fwd_kernel`) sums over
the keep set, which is only known once the row max is (+2NHV, kernels.md §6.2).

Backward (split-vocab, kernels.md §3.3): for each vocab slice sized to the workspace budget,
`_logit_grad_kernel` recomputes the logit tiles and writes dL/da into a [N, slice] workspace; then torch GEMMs
compute dW[slice] = G^T X (written once, fp32) and dX += G W[slice] (fp32 accumulator). No atomics, so the
result is deterministic.

Tile configuration is fixed per mode (no autotuning keyed on N, so results are batch-invariant, §5.3). Under the
interpreter the inputs are upcast to fp32 (bf16 `tl.dot` is wrong there) and blocks are small.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from creditrl.kernels import triton_kernels as K
from creditrl.kernels.dispatch import triton_interpreting
from creditrl.kernels.formulas import (
    ProxyMoments, RowMoments, finalize, logit_grad_coefficients, output_grads, pack_outputs, proxy_threshold,
)
from creditrl.kernels.types import AUX_OUTPUTS, DIFF_OUTPUTS, StatsPlan

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class TileConfig:
    """Block sizes. `vocab_per_split` must be a multiple of `block_n`; none of them may depend on N."""

    block_m: int
    block_n: int
    block_k: int
    vocab_per_split: int
    num_warps: int
    num_stages: int
    merge_block: int = 128


# H100-class default (UNTESTED on a GPU in this repository so far; see docs/bench/kernels.md).
CUDA_CONFIG = TileConfig(block_m=128, block_n=128, block_k=64, vocab_per_split=2048, num_warps=8, num_stages=3)
# Interpreter: small programs count matters more than tile shape; keep tiles <= 2^20 elements.
INTERPRET_CONFIG = TileConfig(block_m=32, block_n=64, block_k=32, vocab_per_split=256, num_warps=1, num_stages=1,
                              merge_block=64)


def tile_config(device: torch.device) -> TileConfig:
    return INTERPRET_CONFIG if device.type != "cuda" or triton_interpreting() else CUDA_CONFIG


def _kernel_input(t: Tensor) -> Tensor:
    """Contiguous kernel operand; fp32 under the interpreter (its bf16 `tl.dot` multiplies bit patterns)."""
    if triton_interpreting() and t.dtype != torch.float32:
        t = t.float()
    return t.contiguous()


def _precision(x: Tensor) -> str:
    """fp32 operands use exact fp32 dots (Triton's NVIDIA default would be tf32); half operands are unaffected."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _flags(plan: StatsPlan) -> dict[str, bool]:
    lp = plan.lp_reg
    return {
        "WANT_P2": plan.want_sum_p2,
        "WANT_ARGMAX": plan.want_max,
        "WANT_MIN": lp is not None and lp.soft,
        "WANT_TH": lp is not None and lp.rule == "fixed",
        "HAS_REF": plan.has_ref,
    }


def _rho_th(plan: StatsPlan) -> float:
    return plan.temperature / plan.lp_reg.threshold_temperature if plan.lp_reg is not None else 1.0


def _row_moments(x: Tensor, w: Tensor, y: Tensor, xr: Tensor | None, wr: Tensor | None, plan: StatsPlan,
                 cfg: TileConfig) -> RowMoments:
    """Forward sweep + fixed-order merge -> RowMoments (fp32 [N] fields)."""
    n, v, h = x.shape[0], w.shape[0], x.shape[1]
    n_split = triton.cdiv(v, cfg.vocab_per_split)
    flags = _flags(plan)
    parts = torch.empty(K.N_FIELDS, n_split, n, dtype=torch.float32, device=x.device)
    xr_, wr_ = (xr, wr) if plan.has_ref else (x, w)
    grid = (triton.cdiv(n, cfg.block_m), n_split)
    K._stats_fwd_kernel[grid](
        x, w, y, xr_, wr_, parts, n, v, h, xr_.shape[1], x.stride(0), w.stride(0), xr_.stride(0), wr_.stride(0),
        plan.temperature, _rho_th(plan), cfg.vocab_per_split, n_split,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, PRECISION=_precision(x),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **flags,
    )
    merged = torch.empty(K.N_FIELDS, n, dtype=torch.float32, device=x.device)
    K._merge_splits_kernel[(triton.cdiv(n, cfg.merge_block),)](
        parts, merged, n, n_split, _rho_th(plan), BLOCK=cfg.merge_block, **flags,
    )
    mom = RowMoments(m=merged[K.F_M], A=merged[K.F_A], B=merged[K.F_B], z_target=merged[K.F_ZY])
    if plan.want_sum_p2:
        mom.A2, mom.B2 = merged[K.F_A2], merged[K.F_B2]
    if plan.want_max:
        mom.argmax = merged[K.F_ARGMAX].long()
    if flags["WANT_MIN"]:
        mom.z_min = merged[K.F_ZMIN]
    if flags["WANT_TH"]:
        mom.A_th = merged[K.F_ATH]
    if plan.has_ref:
        mom.m_ref, mom.A_ref, mom.B_ref, mom.D_ref = (merged[K.F_MR], merged[K.F_AR], merged[K.F_BR],
                                                      merged[K.F_D])
    return mom


def _proxy_moments(x: Tensor, w: Tensor, mom: RowMoments, plan: StatsPlan, cfg: TileConfig) -> ProxyMoments:
    """Second sweep over the vocabulary: sums over the Lp-Reg keep set K = {u >= delta}."""
    n, v = x.shape[0], w.shape[0]
    n_split = triton.cdiv(v, cfg.vocab_per_split)
    delta = proxy_threshold(mom, plan).float().contiguous()
    parts = torch.empty(K.N_PROXY_FIELDS, n_split, n, dtype=torch.float32, device=x.device)
    K._proxy_fwd_kernel[(triton.cdiv(n, cfg.block_m), n_split)](
        x, w, mom.m.contiguous(), delta, parts, n, v, x.shape[1], x.stride(0), w.stride(0),
        plan.temperature, plan.temperature / plan.proxy_temperature, cfg.vocab_per_split, n_split,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, PRECISION=_precision(x),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    sums = torch.empty(K.N_PROXY_FIELDS, n, dtype=torch.float32, device=x.device)
    K._sum_splits_kernel[(triton.cdiv(n, cfg.merge_block),)](
        parts, sums, n, n_split, K.N_PROXY_FIELDS, BLOCK=cfg.merge_block,
    )
    return ProxyMoments(A_q=sums[K.Q_A], B_q=sums[K.Q_B], n_out=sums[K.Q_OUT])


def _slice_width(n: int, v: int, elem_bytes: int, workspace_bytes: int, block_n: int) -> int:
    """Vocab columns per backward slice so that the [N, slice] workspace fits the budget (multiple of block_n)."""
    width = workspace_bytes // max(1, n * elem_bytes)
    width = max(block_n, (width // block_n) * block_n)
    return min(width, triton.cdiv(v, block_n) * block_n)


def _gemm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a @ b with an fp32 result (fp32-output GEMM for half operands on CUDA)."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return torch.mm(a, b, out=out) if out is not None else a @ b
    if a.is_cuda and a.dtype == b.dtype:
        res = torch.mm(a, b, out_dtype=torch.float32)
    else:
        res = a.float() @ b.float()
    if out is not None:
        out.copy_(res)
        return out
    return res


class _TritonTokenStats(torch.autograd.Function):
    """autograd.Function over (hidden, weight, targets, ref_hidden, ref_weight); see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ref_hidden, ref_weight, plan: StatsPlan, workspace_bytes: int):
        cfg = tile_config(hidden.device)
        x, w = _kernel_input(hidden), _kernel_input(weight)
        xr = _kernel_input(ref_hidden) if plan.has_ref else None
        wr = _kernel_input(ref_weight) if plan.has_ref else None
        y = targets.contiguous()
        mom = _row_moments(x, w, y, xr, wr, plan, cfg)
        pmom = _proxy_moments(x, w, mom, plan, cfg) if plan.lp_reg is not None else None
        stats = finalize(mom, pmom, plan)

        ctx.plan, ctx.cfg, ctx.workspace_bytes, ctx.mom, ctx.pmom = plan, cfg, workspace_bytes, mom, pmom
        ctx.save_for_backward(hidden, weight, targets, ref_hidden, ref_weight)
        return pack_outputs(ctx, stats, plan, hidden.new_zeros(0, dtype=torch.float32))

    @staticmethod
    def backward(ctx, *grad_outputs):
        hidden, weight, targets, ref_hidden, ref_weight = ctx.saved_tensors
        plan, cfg, mom, pmom = ctx.plan, ctx.cfg, ctx.mom, ctx.pmom
        grads = output_grads(grad_outputs)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not grads or not (need_x or need_w):
            return None, None, None, None, None, None, None
        x, w, y = _kernel_input(hidden), _kernel_input(weight), targets.contiguous()
        n, v, h = x.shape[0], w.shape[0], x.shape[1]
        co = logit_grad_coefficients(grads, mom, pmom, plan)
        has_p2 = plan.want_sum_p2 and bool(((co.c2 != 0) | (co.c3 != 0)).any())
        has_proxy = plan.lp_reg is not None and bool((co.cq != 0).any())
        has_ref = plan.has_ref and bool((co.cr != 0).any())
        zeros = torch.zeros_like(mom.m)
        row = torch.stack([
            mom.m, torch.log(mom.A), co.c0, co.c1, co.c2, co.c3, co.cy, co.cq, co.cr,
            proxy_threshold(mom, plan) if has_proxy else zeros,
            torch.log(pmom.A_q) if has_proxy else zeros,
            mom.m_ref + torch.log(mom.A_ref) if has_ref else zeros,
        ]).float().contiguous()  # [12, N]
        xr, wr = (_kernel_input(ref_hidden), _kernel_input(ref_weight)) if has_ref else (x, w)
        rho = plan.temperature / plan.proxy_temperature if plan.lp_reg is not None else 1.0

        g_dtype = x.dtype  # half G on GPU is only a GEMM operand; its entries are computed in fp32
        width = _slice_width(n, v, torch.finfo(g_dtype).bits // 8, ctx.workspace_bytes, cfg.block_n)
        workspace = torch.empty(n, width, dtype=g_dtype, device=x.device)
        d_x = torch.zeros(n, h, dtype=torch.float32, device=x.device) if need_x else None
        d_w = torch.empty(v, h, dtype=torch.float32, device=x.device) if need_w else None
        with torch.autocast(x.device.type, enabled=False):
            _split_vocab_backward(x, w, y, xr, wr, row, workspace, d_x, d_w, plan, cfg, rho, has_p2, has_proxy,
                                  has_ref)
        return (d_x.to(hidden.dtype) if need_x else None, d_w.to(weight.dtype) if need_w else None,
                None, None, None, None, None)


def _split_vocab_backward(x, w, y, xr, wr, row, workspace, d_x, d_w, plan: StatsPlan, cfg: TileConfig, rho: float,
                          has_p2: bool, has_proxy: bool, has_ref: bool) -> None:
    """For each vocab slice: dZ tile kernel into the workspace, then dW[slice] = dZ^T X and dX += dZ W[slice]."""
    n, v, h = x.shape[0], w.shape[0], x.shape[1]
    width = workspace.shape[1]
    for v0 in range(0, v, width):
        v1 = min(v0 + width, v)
        g = workspace[:, : v1 - v0]
        grid = (triton.cdiv(n, cfg.block_m), triton.cdiv(v1 - v0, cfg.block_n))
        K._logit_grad_kernel[grid](
            x, w, y, xr, wr, row, g, n, v, h, xr.shape[1], x.stride(0), w.stride(0), xr.stride(0),
            wr.stride(0), g.stride(0), v0, v1, plan.temperature, rho,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, PRECISION=_precision(x),
            HAS_P2=has_p2, HAS_PROXY=has_proxy, HAS_REF=has_ref,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if d_w is not None:
            _gemm(g.T, x, out=d_w[v0:v1])  # [slice, H], written once
        if d_x is not None:
            w_slice = w[v0:v1] if w.dtype == g.dtype else w[v0:v1].to(g.dtype)
            d_x += _gemm(g, w_slice)  # [N, H] fp32 accumulation over slices


def triton_token_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, plan: StatsPlan,
    ref_hidden: Tensor | None = None, ref_weight: Tensor | None = None, workspace_bytes: int | None = None,
) -> dict[str, Tensor]:
    """Statistics of `plan` through the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1). fp32 [N] outputs."""
    ref_h = ref_hidden.detach() if ref_hidden is not None else None
    ref_w = ref_weight.detach() if ref_weight is not None else None
    outs = _TritonTokenStats.apply(hidden, weight, targets, ref_h, ref_w, plan,
                                   workspace_bytes or DEFAULT_WORKSPACE_BYTES)
    named = dict(zip(DIFF_OUTPUTS + AUX_OUTPUTS, outs))
    return {name: named[name] for name in plan.output_names()}
