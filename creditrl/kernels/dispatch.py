"""`linear_token_stats`: validate, compact ignored rows, pick a backend, scatter the statistics back.

Backends (spec kernels.md §2.5):
    "triton"   fused Triton kernels (`triton_op.py`); on CUDA, or on CPU under TRITON_INTERPRET=1 (tests)
    "chunked"  chunked torch autograd.Function (`chunked.py`); CPU path and GPU fallback
    "naive"    materialised logits (`naive.py`); tests and benchmarks only ("reference" is an alias)
    "auto"     triton for CUDA tensors when triton is importable, chunked otherwise
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from creditrl.kernels.chunked import chunked_token_stats
from creditrl.kernels.naive import compute_dtype, naive_token_stats
from creditrl.kernels.types import (
    CORE_OUTPUTS, OPTIONAL_OUTPUTS, PROXY_OUTPUTS, REF_OUTPUTS, LpRegProxy, StatsPlan, TokenStats,
)

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "chunked", "naive", "reference")


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` can succeed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors through numpy (must be set before they are defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_mode() -> str:
    """Where Triton kernels would run: "cuda" (compiled), "interpret" (CPU interpreter) or "torch" (none)."""
    if not triton_available():
        return "torch"
    if triton_interpreting():
        return "interpret"
    return "cuda" if torch.cuda.is_available() else "torch"


def make_plan(
    want: Sequence[str], temperature: float, lp_reg: LpRegProxy | Mapping | None, has_ref: bool
) -> StatsPlan:
    """Validate `want` against the optional inputs and build the static plan of one call."""
    if isinstance(want, str):
        want = (want,)
    known = set(CORE_OUTPUTS + OPTIONAL_OUTPUTS + PROXY_OUTPUTS + REF_OUTPUTS)
    unknown = [w for w in want if w not in known]
    if unknown:
        raise ValueError(f"unknown statistics {unknown}; known: {sorted(known)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lp = LpRegProxy.coerce(lp_reg)
    if lp is None and any(w in PROXY_OUTPUTS for w in want):
        raise ValueError("proxy statistics requested but lp_reg settings were not given")
    if lp is not None and lp.soft and "proxy_kl" in want:
        raise ValueError("proxy_kl is only defined for hard Lp-Reg filtering (lp_reg.soft=False)")
    if not has_ref and "ref_kl" in want:
        raise ValueError("ref_kl requested but ref=(ref_hidden, ref_weight) was not given")
    return StatsPlan(
        temperature=float(temperature),
        want_sum_p2=any(w in ("sum_p2", "sum_p2_z") for w in want),
        want_max=any(w in ("max_logit", "argmax") for w in want),
        lp_reg=lp,
        has_ref=has_ref,
    )


def _validate(hidden: Tensor, weight: Tensor, targets: Tensor, ref: tuple[Tensor, Tensor] | None) -> None:
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden {tuple(hidden.shape)} vs weight {tuple(weight.shape)}")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets must be [N] with N={hidden.shape[0]}, got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be int64 (or int32), got {targets.dtype}")
    for t in (hidden, weight):
        if not t.is_floating_point():
            raise TypeError(f"hidden and weight must be floating point, got {t.dtype}")
    if hidden.device != weight.device or targets.device != hidden.device:
        raise ValueError("hidden, weight and targets must be on the same device")
    if ref is not None:
        if not (isinstance(ref, (tuple, list)) and len(ref) == 2):
            raise TypeError("ref must be a (ref_hidden [N, H_r], ref_weight [V, H_r]) pair")
        ref_hidden, ref_weight = ref
        if ref_hidden.dim() != 2 or ref_hidden.shape[0] != hidden.shape[0]:
            raise ValueError(f"ref_hidden must be [N, H_r] with N={hidden.shape[0]}, got {tuple(ref_hidden.shape)}")
        if ref_weight.dim() != 2 or ref_weight.shape[1] != ref_hidden.shape[1]:
            raise ValueError(
                f"ref_weight must be [V, H_r]; got {tuple(ref_weight.shape)} for H_r={ref_hidden.shape[1]}")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "naive"
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "chunked"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the optional `triton` package (pip install creditrl[triton])")
        if device.type != "cuda" and not triton_interpreting():
            raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before import")
    return backend


def _anchor(hidden: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """A zero scalar attached to hidden and weight, so an all-ignored batch still yields (zero) gradients."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return (hidden.sum() * 0 + weight[:1].sum() * 0).to(dtype)
    return torch.zeros((), dtype=dtype, device=hidden.device)


def _scatter(values: dict[str, Tensor], index: Tensor | None, n: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """Outputs at the valid rows `index` -> [n] tensors with zeros (False) at ignored rows."""
    out = {}
    for name, v in values.items():
        if v.is_floating_point():
            v = v.to(dtype)
        if index is None:
            out[name] = v
            continue
        out[name] = torch.zeros(n, dtype=v.dtype, device=v.device).index_copy(0, index, v)
    return out


def linear_token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    want: Sequence[str] = ("logp", "entropy"),
    ignore_index: int = -100,
    lp_reg: LpRegProxy | Mapping | None = None,
    ref: tuple[Tensor, Tensor] | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    vocab_limit: int | None = None,
    workspace_bytes: int | None = None,
    gemm_precision: str | None = None,
) -> TokenStats:
    """Per-token statistics of softmax(hidden @ weight.T / T) without holding the [N, V] logits.

    Args:
        hidden: [N, H] bf16/fp16/fp32 (float64 for tests), already compacted to response tokens.
        weight: [V, H] lm_head weight (may be tied to the embedding). Gradients flow to hidden and weight.
        targets: [N] int64 target ids; rows equal to `ignore_index` get 0 outputs and no gradient.
        temperature: logits are divided by T in fp32 (must match the rollout's sampling temperature).
        want: statistics to compute beyond logp/entropy/lse (always computed); see `TokenStats`.
        lp_reg: Lp-Reg proxy settings (`LpRegProxy` or a mapping of its fields) -> proxy_* outputs.
        ref: (ref_hidden [N, H_r], ref_weight [V, H_r]) of the reference model -> ref_kl = KL(pi_ref || pi_theta).
        backend: "auto" | "triton" | "chunked" | "naive" ("reference" = "naive"); see the module docstring.
        chunk_size: rows per chunk of the chunked backend (default: from `workspace_bytes`).
        vocab_limit: use only the first `vocab_limit` rows of the weights (padded vocabularies; kernels.md §5.4).
        workspace_bytes: logits workspace budget of the chunked / Triton backward.
        gemm_precision: CPU GEMM operands of the chunked backend: "auto" | "fp32" | "bf16" | "bf16-backward"
            (creditrl/kernels/chunked.py; None = its default, "auto": bf16 only for bf16 inputs on a CPU that
            multiplies bf16 natively).

    Returns:
        TokenStats of fp32 [N] tensors (float64 for float64 inputs). Under `torch.no_grad()` the values are
        bitwise identical to those of a grad-enabled call (same code, same chunking).
    """
    _validate(hidden, weight, targets, ref)
    plan = make_plan(want, temperature, lp_reg, ref is not None)
    name = _resolve_backend(backend, hidden.device)
    if vocab_limit is not None:
        if not 0 < vocab_limit <= weight.shape[0]:
            raise ValueError(f"vocab_limit must be in (0, {weight.shape[0]}], got {vocab_limit}")
        weight = weight[:vocab_limit]
        if ref is not None:
            ref = (ref[0], ref[1][:vocab_limit])
    if ref is not None and ref[1].shape[0] != weight.shape[0]:
        raise ValueError(f"ref_weight has {ref[1].shape[0]} vocabulary rows, the policy weight {weight.shape[0]}")

    n, vocab = hidden.shape[0], weight.shape[0]
    targets = targets.long()
    valid = targets != ignore_index  # [N]
    index = None if bool(valid.all()) else valid.nonzero().squeeze(1)
    rows = targets if index is None else targets.index_select(0, index)
    if rows.numel() and (bool((rows < 0).any()) or bool((rows >= vocab).any())):
        raise ValueError(f"targets must be in [0, {vocab}) or equal to ignore_index={ignore_index}")
    out_dtype = compute_dtype(hidden, weight)

    if rows.numel() == 0:
        zero = torch.zeros(n, dtype=out_dtype, device=hidden.device) + _anchor(hidden, weight, out_dtype)
        values = {k: (torch.zeros(n, dtype=torch.bool, device=hidden.device) if k == "target_in_proxy" else
                      torch.zeros(n, dtype=torch.int64, device=hidden.device) if k == "argmax" else zero)
                  for k in plan.output_names()}
        return TokenStats(**values)

    h = hidden if index is None else hidden.index_select(0, index)
    ref_pair = None
    if ref is not None:
        ref_pair = (ref[0] if index is None else ref[0].index_select(0, index), ref[1])

    if name == "naive":
        values = naive_token_stats(h, weight, rows, plan, *(ref_pair or (None, None)))
    elif name == "chunked":
        values = chunked_token_stats(h, weight, rows, plan, *(ref_pair or (None, None)),
                                     chunk_size=chunk_size, workspace_bytes=workspace_bytes,
                                     gemm_precision=gemm_precision)
    else:
        from creditrl.kernels.triton_op import triton_token_stats  # imports triton (slow, optional)

        values = triton_token_stats(h, weight, rows, plan, *(ref_pair or (None, None)),
                                    workspace_bytes=workspace_bytes)
    return TokenStats(**_scatter(values, index, n, out_dtype))
