"""Chunked torch lm_head statistics: the CPU path, the GPU fallback, and the readable reference design.

Forward, per chunk of C rows: z = (X_c @ W^T) / T in fp32 ([C, V]), then the row moments of
`creditrl.kernels.formulas` (max, sum e^u, ...). Only X, W, the targets and O(N) row moments are saved.
Backward, per chunk: recompute z identically, build the logit gradient
    dA = p (c0 + c1 u + c2 p + c3 p u) + cy 1[j=y] + cq q 1[K] + cr r
from the per-row coefficients, then dX_c = dA @ W and dW += dA^T @ X_c into an fp32 buffer (kernels.md §2.5).
That is 8NHV FLOPs (four GEMMs: forward, recompute, dX, dW) against 6NHV for a path that keeps the [N, V]
logits; the recompute is the price of holding O(C V) instead of O(N V).

Two [C, V] buffers are allocated once per call and reused by every chunk (in-place ops, `out=` GEMMs): fresh
large allocations cost page faults that are as expensive as the elementwise math on CPU. When the call needs
gradients, the buffer holding the forward's last chunk is handed to the backward, which starts with that chunk
and skips its recompute (N <= C: no recompute at all; at N=4096, C=699 one GEMM in 24 less). The peak is
unchanged (the backward would allocate that buffer anyway); between forward and backward the call holds one
[C, V] fp32 block more (89 MiB at C=699, V=32000), per pending call. Chunk rows come from a
byte budget: rows = workspace_bytes // (LIVE_CHUNK_TENSORS * 4 * V). Multi-pass statistics (the Lp-Reg keep
set needs the row max first) are free here: the chunk's logits are in memory.

Fused elementwise work (`fuse`). For the core plan (logp / entropy / lse, no sum_p2, max, Lp-Reg or ref) the
per-chunk elementwise math is two `torch.compile`d functions (dynamic shapes, so one compilation serves every
chunk and N):
    forward   m = max_j z_j,  A = sum_j e^{u_j},  B = sum_j e^{u_j} u_j,  A_{-y} = sum_{j != y} e^{u_j}
              with u = z - m                                                        (2 reads, no write)
    backward  dA_j = e^{u_j} (c0 / A + (c1 / A) u_j), written over the chunk's logits (1 read, 1 write), then
              the target column dA_y = cy (A_{-y} / A) + p_y (c0' + c1 u_y), c0' = c0 + cy (`_target_column`)
instead of 6 eager passes each (max, sub, exp, sum, e*u dot / sub, exp, addcmul, mul). The target column form
has no cancellation when p_y -> 1 (1 - p_y = A_{-y} / A): at N=512, H=128, V=8192, peaked rows, the fp32 dX error
against float64 drops from 6.8e-6 (eager form) to 2.4e-6 (naive fp32 autograd: 7.4e-5). Measured on one core at
N=4096, H=896, V=32000 (docs/bench/kernels.md): ~200 -> ~26 ms per [699, 32000] chunk forward, ~87 -> ~26 ms
backward. "auto" fuses on CPU when N * V >= FUSE_MIN_ELEMENTS (compilation costs seconds once per process, so
small calls, e.g. the tests, stay eager); other plans and devices run the eager code, which is the reference
of the fused one (tests/kernels/test_chunked_fast.py). If compilation fails (no C++ compiler) the eager code
runs, with one warning.

GEMM precision (`gemm_precision`). "fp32": operands and accumulation in fp32 (float64 for float64 inputs).
"bf16": CPU GEMM operands rounded to bf16, fp32 accumulation and fp32 output (oneDNN fpmath mode, AMX /
AVX512-BF16); the logits are never rounded (kernels.md §5.1), the row statistics stay fp32, and dA is rounded
to bf16 only as an operand of the dX / dW GEMMs (the CUDA path does the same with bf16 inputs). "auto" picks:
    - bf16 when hidden and weight are both bf16 and the CPU has fast bf16 matmul: rounding bf16 values to bf16
      is exact, so the forward logits are the exact fp32-accumulated product, bit for bit the precision the
      caller already has, at ~2-3x the fp32 GEMM speed;
    - bf16 when the caller opted in through torch's own switch for fp32 matmuls on CPU,
      `torch.set_float32_matmul_precision("medium")` or `torch.backends.mkldnn.matmul.fp32_precision = "bf16"`
      (the same switch makes the naive path and torch.compile use bf16 GEMMs);
    - fp32 otherwise: fp32 callers (and the fp32-master-weight autocast case, bf16 hidden + fp32 weight) keep
      fp32 GEMMs unless they ask, because bf16 operands cost ~1e-3 in logp (measured in the benchmark table).
"bf16-backward" (explicit only): the forward GEMM in fp32, so every returned statistic (logp for the PPO ratio,
entropy) is fp32-exact, and the three backward GEMMs (recompute, dX, dW) with bf16 operands, so the gradients
carry bf16-operand error (~4e-3 relative, like any bf16 mixed-precision step). The recompute then differs from
the forward logits by that rounding, so the backward takes the row moments (m, A, B) of its own logits (one
more fused read per chunk) and differentiates them consistently. Only for plans the fused path covers; other
plans run this mode's backward in fp32.
Non-GEMM matmuls (the batched row dots) always run in fp32 whatever the global switch says. The switch is
process-global: it is set around each GEMM and restored, so a matmul run concurrently by another thread of the
same process during the call may see it. CUDA keeps its own handling (half operands, fp32-output GEMM).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

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
# "auto" fusion threshold on N * V (128 rows of a 32k vocabulary): compilation (~10 s once) pays back quickly.
FUSE_MIN_ELEMENTS = 2**22
GEMM_PRECISIONS = ("auto", "fp32", "bf16", "bf16-backward")
# What `chunked_token_stats(gemm_precision=None)` uses (the dispatcher passes None): a process-wide knob.
DEFAULT_GEMM_PRECISION = "auto"


def default_chunk_rows(n_rows: int, vocab: int, device: torch.device, workspace_bytes: int | None = None) -> int:
    """Rows per chunk so that LIVE_CHUNK_TENSORS fp32 [C, V] tensors fit in `workspace_bytes`."""
    if workspace_bytes is None:
        workspace_bytes = DEFAULT_WORKSPACE_BYTES_CUDA if device.type == "cuda" else DEFAULT_WORKSPACE_BYTES_CPU
    rows = workspace_bytes // (LIVE_CHUNK_TENSORS * 4 * max(vocab, 1))
    return int(max(1, min(rows, max(n_rows, 1))))


@functools.cache
def cpu_fast_bf16() -> bool:
    """Whether this CPU has native bf16 matmul (AVX512-BF16 or AMX tiles), where bf16 GEMMs beat fp32 ~2-3x."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private probes; absent on other builds
        return False


def _torch_fp32_matmul_is_bf16() -> bool:
    """Whether the caller asked torch for bf16 fp32-matmuls on CPU (float32 matmul precision "medium")."""
    try:
        return torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    except AttributeError:
        return torch.get_float32_matmul_precision() == "medium"


def resolve_gemm_precision(requested: str, *operands: Tensor | None) -> str:
    """"fp32" or "bf16" for the CPU GEMMs over `operands` (module docstring); CUDA and float64 give "fp32"."""
    if requested not in GEMM_PRECISIONS:
        raise ValueError(f"gemm_precision must be one of {GEMM_PRECISIONS}, got {requested!r}")
    ops = [t for t in operands if t is not None]
    if not ops or ops[0].device.type != "cpu" or any(t.dtype == torch.float64 for t in ops):
        return "fp32"
    if requested != "auto":
        return requested
    if not cpu_fast_bf16():
        return "fp32"
    if all(t.dtype == torch.bfloat16 for t in ops) or _torch_fp32_matmul_is_bf16():
        return "bf16"
    return "fp32"


def _mkldnn_matmul_precision(mode: str):
    """Context setting torch's CPU (oneDNN) fp32-matmul precision: "ieee" or "bf16" (restored on exit)."""
    if not hasattr(torch.backends.mkldnn, "matmul"):
        return contextlib.nullcontext()
    return _set_mkldnn_precision(mode)


@contextlib.contextmanager
def _set_mkldnn_precision(mode: str):
    old = torch.backends.mkldnn.matmul.fp32_precision
    if old == mode:
        yield
        return
    torch.backends.mkldnn.matmul.fp32_precision = mode
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = old


def _forward_precision(precision: str) -> str:
    """The forward GEMMs' precision: "bf16-backward" keeps the forward (the returned statistics) in fp32."""
    return "fp32" if precision == "bf16-backward" else precision


def _backward_precision(precision: str) -> str:
    """The backward GEMMs' precision (recompute, dX, dW)."""
    return "bf16" if precision in ("bf16", "bf16-backward") else "fp32"


def _gemm_ctx(precision: str, device: torch.device):
    """Around a large GEMM: bf16 operands when `precision` == "bf16" (CPU), else exact fp32."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    return _mkldnn_matmul_precision("bf16" if precision == "bf16" else "ieee")


# ---- fused per-chunk elementwise math (module docstring, "Fused elementwise work") ----------------------------
def _fused_moments_math(raw: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(m, A, B, A_{-y}) of the rows of z = raw / T without writing a [C, V] tensor once compiled.

    A_{-y} = sum_{j != y} e^{u_j} gives 1 - p_y = A_{-y} / A without cancellation (see `_target_column`).
    [C, V], [C] -> 4 x [C]
    """
    z = raw / temperature if temperature != 1.0 else raw
    m = z.amax(dim=-1)
    u = z - m[:, None]
    e = torch.exp(u)
    off_target = torch.arange(raw.shape[1], device=raw.device)[None, :] != y[:, None]
    return m, e.sum(-1), (e * u).sum(-1), torch.where(off_target, e, 0.0).sum(-1)


def _fused_grad_math(raw: Tensor, m: Tensor, a0: Tensor, a1: Tensor, temperature: float) -> None:
    """raw <- e^u (a0 + a1 u), u = raw / T - m: the main logit-gradient term, in place.  [C, V]"""
    z = raw / temperature if temperature != 1.0 else raw
    u = z - m[:, None]
    raw.copy_(torch.exp(u) * (a0[:, None] + a1[:, None] * u))


def _target_column(grads: dict[str, Tensor], mom: RowMoments, a_excl: Tensor, co: LogitGradCoefficients,
                   plan: StatsPlan) -> Tensor:
    """dA_y of the core plan, written so that p_y -> 1 loses no bits (Liger's cancellation fix, kernels.md §5.1).

    dA_y = p_y (c0 + c1 u_y) + cy with c0 = c0' - cy (c0' = c0 without the logp term) equals
    cy (1 - p_y) + p_y (c0' + c1 u_y), and 1 - p_y = A_{-y} / A is a sum of positive terms; the plain form
    subtracts two numbers close to cy and keeps only ~eps / (1 - p_y) relative accuracy.  [N]
    """
    rest = logit_grad_coefficients({k: g for k, g in grads.items() if k != "logp"}, mom, None, plan)
    u_y = mom.z_target - mom.m
    p_y = torch.exp(u_y) / mom.A
    return co.cy * (a_excl / mom.A) + p_y * (rest.c0 + co.c1 * u_y)


_COMPILED: dict[str, object] = {}
_FUSE_BROKEN = False


def _run_fused(fn, *args):
    """Run the compiled form of `fn` (compiled on first use); on a compile failure warn once and run it eagerly."""
    global _FUSE_BROKEN
    if not _FUSE_BROKEN:
        compiled = _COMPILED.get(fn.__name__)
        if compiled is None:
            compiled = _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True, fullgraph=True)
        try:
            return compiled(*args)
        except Exception as exc:  # noqa: BLE001 - no compiler, unsupported build: the eager math is equivalent
            _FUSE_BROKEN = True
            logger.warning("chunked lm_head: torch.compile of the fused chunk math failed (%s: %s); running eager",
                           type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
    return fn(*args)


def fusable(plan: StatsPlan) -> bool:
    """Whether the plan is the core one the fused functions cover (no sum_p2, max/argmax, Lp-Reg or ref)."""
    return not (plan.want_sum_p2 or plan.want_max or plan.lp_reg is not None or plan.has_ref)


def resolve_fuse(fuse: bool | None, plan: StatsPlan, n_rows: int, vocab: int, device: torch.device) -> bool:
    """fuse=None ("auto"): on CPU for N * V >= FUSE_MIN_ELEMENTS unless CREDITRL_CHUNKED_FUSE=0."""
    if not fusable(plan):
        return False
    if fuse is not None:
        return bool(fuse)
    if os.environ.get("CREDITRL_CHUNKED_FUSE", "1") in ("0", "", "false"):
        return False
    return device.type == "cpu" and n_rows * vocab >= FUSE_MIN_ELEMENTS


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


def _raw_logits(x_c: Tensor, w_t: Tensor, dt: torch.dtype, out: Tensor, precision: str = "fp32") -> Tensor:
    """a = x_c @ w_t (fp32 output, bf16 operands when precision == "bf16") into `out` when possible."""
    with _gemm_ctx(precision, x_c.device):
        return matmul_fp32(x_c, w_t, dt, out=out)


def _shifted_logits(x_c: Tensor, w_t: Tensor, plan: StatsPlan, dt: torch.dtype, out: Tensor,
                    precision: str = "fp32") -> Tensor:
    """z = (x_c @ w_t) / T written into `out` when possible.  [C, H] x [H, V] -> [C, V]"""
    z = _raw_logits(x_c, w_t, dt, out, precision)
    if plan.temperature != 1.0:
        z.div_(plan.temperature)
    return z


class _Buffers:
    """Two [C, V] work buffers reused by every chunk of one forward or backward call."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device, a: Tensor | None = None):
        self.a = torch.empty(rows, vocab, dtype=dtype, device=device) if a is None else a
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
    def forward(ctx, hidden, weight, targets, ref_hidden, ref_weight, plan: StatsPlan, chunk_rows: int,
                fuse: bool, precision: str, ref_precision: str, keep_last: bool):
        n, vocab = hidden.shape[0], weight.shape[0]
        fwd_precision, fwd_ref_precision = _forward_precision(precision), _forward_precision(ref_precision)
        with torch.autocast(hidden.device.type, enabled=False), _gemm_ctx("fp32", hidden.device):
            dt = compute_dtype(hidden, weight)
            w_t = operand(weight, dt).T  # [H, V]
            wr_t = operand(ref_weight, dt).T if plan.has_ref else None
            bufs = _Buffers(min(chunk_rows, n), vocab, dt, hidden.device)
            moms, pmoms, a_excls = [], [], []
            for start in range(0, n, chunk_rows):
                sl = slice(start, start + chunk_rows)
                y = targets[sl]
                z, tmp = bufs.take(y.shape[0])
                if fuse:  # core plan: (m, A, B) in one compiled read of the raw logits
                    raw = _raw_logits(operand(hidden[sl], dt), w_t, dt, out=z, precision=fwd_precision)
                    z_target = raw.gather(1, y[:, None]).squeeze(1)
                    if plan.temperature != 1.0:
                        z_target = z_target / plan.temperature
                    in_buffer = raw.data_ptr() == bufs.a.data_ptr()
                    m, a, b, a_excl = _run_fused(_fused_moments_math, raw, y, plan.temperature)
                    moms.append(RowMoments(m=m, A=a, B=b, z_target=z_target))
                    pmoms.append(None)
                    a_excls.append(a_excl)
                    continue
                z = _shifted_logits(operand(hidden[sl], dt), w_t, plan, dt, out=z, precision=fwd_precision)
                in_buffer = z.data_ptr() == bufs.a.data_ptr()  # not for CUDA half operands (fresh GEMM output)
                ref_chunk = None
                if plan.has_ref:
                    ref_chunk = lambda sl=sl: _shifted_logits(  # noqa: E731
                        operand(ref_hidden[sl], dt), wr_t, plan, dt, out=torch.empty_like(tmp),
                        precision=fwd_ref_precision)
                mom, pmom = _chunk_moments(z, tmp, y, plan, ref_chunk)
                moms.append(mom)
                pmoms.append(pmom)
            # the last chunk's logits (raw when fused, z / T - m otherwise) stay for the backward: one recompute less
            ctx.kept = bufs.a if keep_last and in_buffer else None
            del bufs
            mom = _cat(moms, RowMoments)
            pmom = _cat(pmoms, ProxyMoments) if plan.lp_reg is not None else None
            stats = finalize(mom, pmom, plan)

        ctx.plan, ctx.chunk_rows, ctx.mom, ctx.pmom = plan, chunk_rows, mom, pmom
        ctx.fuse, ctx.precision, ctx.ref_precision = fuse, _backward_precision(precision), \
            _backward_precision(ref_precision)
        ctx.a_excl = torch.cat(a_excls) if fuse else None
        ctx.remoment = precision == "bf16-backward"  # backward recomputes the row moments of its own logits
        ctx.save_for_backward(hidden, weight, targets, ref_hidden, ref_weight)
        return pack_outputs(ctx, stats, plan, hidden.new_zeros(0, dtype=dt))

    @staticmethod
    def backward(ctx, *grad_outputs):
        hidden, weight, targets, ref_hidden, ref_weight = ctx.saved_tensors
        plan, chunk_rows, mom, pmom = ctx.plan, ctx.chunk_rows, ctx.mom, ctx.pmom
        precision = ctx.precision
        nones = (None,) * 9
        grads = output_grads(grad_outputs)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        kept, ctx.kept = ctx.kept, None
        if not grads or not (need_x or need_w):
            return (None, None) + nones
        n, vocab = hidden.shape[0], weight.shape[0]
        dev = hidden.device
        with torch.autocast(dev.type, enabled=False), _gemm_ctx("fp32", dev):
            dt = compute_dtype(hidden, weight)
            co = logit_grad_coefficients(grads, mom, pmom, plan)
            terms = frozenset(name for name, c in (("p2", co.c3 if plan.want_sum_p2 else None),
                                                   ("p2", co.c2 if plan.want_sum_p2 else None),
                                                   ("proxy", co.cq if plan.lp_reg is not None else None),
                                                   ("ref", co.cr if plan.has_ref else None))
                              if c is not None and bool((c != 0).any()))
            fuse = ctx.fuse and not terms
            remoment = ctx.remoment and fuse
            if ctx.remoment and not fuse:  # bf16-backward needs the fused path's per-chunk moments
                precision = "fp32"
            if fuse and not remoment:
                inv_a = 1.0 / mom.A
                a0_all, a1_all = co.c0 * inv_a, co.c1 * inv_a
                d_target = _target_column(grads, mom, ctx.a_excl, co, plan)
            w_op = operand(weight, dt)  # [V, H]
            wr_t = operand(ref_weight, dt).T if plan.has_ref else None
            d_hidden = torch.empty(hidden.shape, dtype=dt, device=dev) if need_x else None
            d_weight = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
            bufs = _Buffers(min(chunk_rows, n), vocab, dt, dev, a=kept)
            starts = list(range(0, n, chunk_rows))
            starts = starts[-1:] + starts[:-1]  # the kept last chunk first; the same order without it (reentrant)
            for i, start in enumerate(starts):
                sl = slice(start, start + chunk_rows)
                x_c = operand(hidden[sl], dt)
                u, tmp = bufs.take(x_c.shape[0])
                have = kept is not None and i == 0  # u already holds this chunk's forward logits
                if remoment:  # bf16 recompute: the gradient of these logits, from their own m, A, B (consistent)
                    grad = u if have else _raw_logits(x_c, w_op.T, dt, out=u, precision=precision)
                    y = targets[sl]
                    z_t = grad.gather(1, y[:, None]).squeeze(1)
                    if plan.temperature != 1.0:
                        z_t = z_t / plan.temperature
                    m_c, a_c, b_c, ax_c = _run_fused(_fused_moments_math, grad, y, plan.temperature)
                    mom_c = RowMoments(m=m_c, A=a_c, B=b_c, z_target=z_t)
                    g_c = {k: g[sl] for k, g in grads.items()}
                    co_c = logit_grad_coefficients(g_c, mom_c, None, plan)
                    _run_fused(_fused_grad_math, grad, m_c, co_c.c0 / a_c, co_c.c1 / a_c, plan.temperature)
                    grad.scatter_(1, y[:, None], _target_column(g_c, mom_c, ax_c, co_c, plan)[:, None])
                elif fuse:  # dA = e^u (c0 + c1 u) / A in one compiled pass over the raw logits; dA_y set apart
                    grad = u if have else _raw_logits(x_c, w_op.T, dt, out=u, precision=precision)
                    _run_fused(_fused_grad_math, grad, mom.m[sl], a0_all[sl], a1_all[sl], plan.temperature)
                    grad.scatter_(1, targets[sl, None], d_target[sl, None])
                else:
                    if not have:  # as in the forward
                        u = _shifted_logits(x_c, w_op.T, plan, dt, out=u, precision=precision).sub_(mom.m[sl, None])
                    ref_chunk = None
                    if "ref" in terms:
                        ref_chunk = lambda sl=sl: _shifted_logits(  # noqa: E731
                            operand(ref_hidden[sl], dt), wr_t, plan, dt, out=torch.empty_like(tmp),
                            precision=ctx.ref_precision)
                    grad = _chunk_logit_grad(u, tmp, targets[sl], _rows(mom, sl),
                                             _rows(pmom, sl) if pmom is not None else None, _rows(co, sl),
                                             plan, ref_chunk, terms)
                grad = grad.to(x_c.dtype)  # half only as a GEMM operand on CUDA (fp32 accumulation and output)
                with _gemm_ctx(precision, dev):  # bf16: dA rounded to bf16 only as a GEMM operand
                    if need_x:
                        d_hidden[sl] = matmul_fp32(grad, w_op, dt, out=d_hidden[sl] if grad.dtype == dt else None)
                    if need_w:
                        if grad.dtype == dt:
                            d_weight.addmm_(grad.T, x_c)  # [V, H] += [V, C] @ [C, H]
                        else:
                            d_weight += matmul_fp32(grad.T, x_c, dt)
            del bufs
        return (d_hidden.to(hidden.dtype) if need_x else None, d_weight.to(weight.dtype) if need_w else None) + nones


def chunked_token_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, plan: StatsPlan,
    ref_hidden: Tensor | None = None, ref_weight: Tensor | None = None,
    chunk_size: int | None = None, workspace_bytes: int | None = None,
    gemm_precision: str | None = None, fuse: bool | None = None,
) -> dict[str, Tensor]:
    """Statistics of `plan` with autograd, holding at most a few [chunk_size, V] blocks of logits at a time.

    Shapes: hidden [N, H], weight [V, H], targets [N] (valid ids), ref_hidden [N, H_r], ref_weight [V, H_r].
    gemm_precision: "auto" | "fp32" | "bf16" | "bf16-backward" (CPU GEMM operands; module docstring;
    None = DEFAULT_GEMM_PRECISION). fuse: compiled chunk elementwise math (None = auto; module docstring).
    Returns [N] tensors (fp32, or float64 for float64 inputs), keyed by output name.
    """
    rows = chunk_size or default_chunk_rows(hidden.shape[0], weight.shape[0], hidden.device, workspace_bytes)
    ref_h = ref_hidden.detach() if ref_hidden is not None else None
    ref_w = ref_weight.detach() if ref_weight is not None else None
    gemm_precision = DEFAULT_GEMM_PRECISION if gemm_precision is None else gemm_precision
    precision = resolve_gemm_precision(gemm_precision, hidden, weight)
    ref_precision = resolve_gemm_precision(gemm_precision, ref_h, ref_w) if ref_h is not None else "fp32"
    do_fuse = resolve_fuse(fuse, plan, hidden.shape[0], weight.shape[0], hidden.device)
    # bf16-backward recomputes with bf16 operands: keeping exact logits would make a second backward differ
    keep_last = (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
                 and precision != "bf16-backward")
    outs = _ChunkedTokenStats.apply(hidden, weight, targets, ref_h, ref_w, plan, rows, do_fuse, precision,
                                    ref_precision, keep_last)
    named = dict(zip(DIFF_OUTPUTS + AUX_OUTPUTS, outs))
    return {name: named[name] for name in plan.output_names()}
