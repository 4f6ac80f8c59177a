"""`token_stat_scope`: the set of tokens over which a token-selection or normalisation statistic is taken.

Every reference implementation of a token-level method takes its statistics per micro-batch per rank
(algorithms.md §17.1): STEER's min/max |Omega|, Lp-Reg's bottom-rho threshold and its `k > 1` gate, HAPO's entropy
quantile / RMS / max, 80/20's top-rho entropy threshold. The result then depends on the micro-batch size, dynamic
batching and the GPU count. creditrl makes the scope a setting shared by every part:

    algorithm.token_stat_scope: micro_batch    # default: reference parity
                                mini_batch     # all micro-batches of one optimizer step, all ranks
                                global         # the whole step batch, all ranks

How a part uses it (see `creditrl/algorithms/compose.py`):

* A part with such statistics has a `scope` attribute (compose sets it from the config) and a
  `prepare(inputs, all_reduce)` method. With `micro_batch` it computes its statistics from the micro-batch inside
  `__call__`. With `mini_batch` / `global`, `Algorithm.prepare` hands it the no-grad `LossInputs` of the whole scope
  first; the part computes its statistics there, stores them, and `__call__` only applies them.
* Across data-parallel ranks, statistics are combined with an `AllReduce` callable `(tensor, op) -> tensor`,
  op in {"sum", "min", "max"}, the same contract as `torch.distributed.all_reduce` (default: the local identity).
  Top-k thresholds and quantiles never gather the token tensors: `kth_largest` finds the exact k-th value by
  bisection on the float's ordered bit pattern, one all-reduced count per step (at most 64 scalar all-reduces).

Ties: a threshold selection keeps every token equal to the k-th value, so with ties it can keep more than k tokens
(deterministically), where the references' `torch.topk` keeps exactly k in an implementation-defined order
(§17.2). Without ties the two agree.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

TOKEN_STAT_SCOPES = ("micro_batch", "mini_batch", "global")
TokenStatScope = Literal["micro_batch", "mini_batch", "global"]
ReduceOp = Literal["sum", "min", "max"]
AllReduce = Callable[[Tensor, str], Tensor]  # (local tensor, op) -> tensor reduced over ranks, same shape


def local_all_reduce(x: Tensor, op: str) -> Tensor:
    """The single-process `AllReduce`: the local value is the global one."""
    if op not in ("sum", "min", "max"):
        raise ValueError(f"unknown all-reduce op '{op}'; use sum, min or max")
    return x


def check_scope(scope: str) -> str:
    if scope not in TOKEN_STAT_SCOPES:
        raise ValueError(f"unknown token_stat_scope '{scope}'; choose one of {', '.join(TOKEN_STAT_SCOPES)}")
    return scope


# ---- reductions over the selected tokens of the scope ---------------------------------------------------------
def scope_count(mask: Tensor, all_reduce: AllReduce = local_all_reduce) -> int:
    """Number of selected tokens (`mask` != 0) over the scope."""
    return int(all_reduce(mask.ne(0).sum().to(torch.int64), "sum").item())


def scope_sum(values: Tensor, mask: Tensor, all_reduce: AllReduce = local_all_reduce) -> Tensor:
    """Sum of `values` over the selected tokens of the scope, in float64. Scalar."""
    return all_reduce(torch.where(mask.ne(0), values.double(), 0.0).sum(), "sum")


def scope_max(values: Tensor, mask: Tensor, all_reduce: AllReduce = local_all_reduce) -> Tensor:
    """Maximum over the selected tokens of the scope (-inf when none), float64 scalar."""
    local = torch.where(mask.ne(0), values.double(), float("-inf")).amax() if values.numel() else \
        torch.tensor(float("-inf"), dtype=torch.float64)
    return all_reduce(local, "max")


def scope_min(values: Tensor, mask: Tensor, all_reduce: AllReduce = local_all_reduce) -> Tensor:
    """Minimum over the selected tokens of the scope (+inf when none), float64 scalar."""
    local = torch.where(mask.ne(0), values.double(), float("inf")).amin() if values.numel() else \
        torch.tensor(float("inf"), dtype=torch.float64)
    return all_reduce(local, "min")


# ---- order statistics without gathering ------------------------------------------------------------------------
_LOW63 = 0x7FFFFFFFFFFFFFFF


def _ordered_keys(values: Tensor) -> Tensor:
    """int64 keys with the order of the float64 values (IEEE-754 sign-magnitude -> two's complement order)."""
    bits = values.double().contiguous().view(torch.int64)
    return torch.where(bits < 0, bits ^ _LOW63, bits)


def _key_to_value(key: int) -> float:
    bits = key ^ _LOW63 if key < 0 else key
    return torch.tensor([bits], dtype=torch.int64).view(torch.float64).item()


def kth_largest(values: Tensor, k: int, all_reduce: AllReduce = local_all_reduce) -> float:
    """The k-th largest of `values` (finite) over every rank: ties counted, k in [1, total count].

    Single process (`local_all_reduce`): `torch.kthvalue`. Across ranks: bisection on the ordered int64 keys of the
    float64 values for the largest key t with #{key >= t} >= k; each step all-reduces one count, so nothing but
    scalars crosses ranks, and the result is exact (it is the key of an element).
    """
    values = values.reshape(-1).double()
    if bool((~torch.isfinite(values)).any()):
        raise ValueError("kth_largest needs finite values")
    if all_reduce is local_all_reduce:
        n = values.numel()
        if not 1 <= k <= n:
            raise ValueError(f"k={k} out of range for {n} values")
        return torch.kthvalue(values, n - k + 1).values.item()
    n = int(all_reduce(torch.tensor(values.numel(), dtype=torch.int64), "sum").item())
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for {n} values")
    keys = _ordered_keys(values)
    big = torch.iinfo(torch.int64)
    lo = int(all_reduce(keys.amin() if keys.numel() else torch.tensor(big.max), "min").item())
    hi = int(all_reduce(keys.amax() if keys.numel() else torch.tensor(big.min), "max").item())
    while lo < hi:  # invariant: #{key >= lo} >= k, and the answer is in [lo, hi]
        mid = lo + (hi - lo + 1) // 2
        count = int(all_reduce((keys >= mid).sum().to(torch.int64), "sum").item())
        if count >= k:
            lo = mid
        else:
            hi = mid - 1
    return _key_to_value(lo)


def kth_smallest(values: Tensor, k: int, all_reduce: AllReduce = local_all_reduce) -> float:
    """The k-th smallest of `values` over every rank (see `kth_largest`)."""
    return -kth_largest(-values.reshape(-1).double(), k, all_reduce)


class ScopedStats:
    """Holder of one part's scope statistics: computed per micro-batch, or prepared once for a wider scope.

    A part owns one of these, sets `scope` (compose does it), and calls `get(inputs, compute)` in `__call__`:
    with "micro_batch" this computes the statistics of the micro-batch; otherwise it returns what `prepare`
    stored for the current scope. `compute(inputs, all_reduce)` is the part's pure statistics function.
    """

    def __init__(self, owner: str):
        self.owner = owner
        self.scope: str = "micro_batch"
        self._stored = None

    def prepare(self, inputs, compute: Callable, all_reduce: AllReduce | None = None) -> None:
        self._stored = compute(inputs, all_reduce or local_all_reduce)

    def get(self, inputs, compute: Callable):
        if check_scope(self.scope) == "micro_batch":
            return compute(inputs, local_all_reduce)
        if self._stored is None:
            raise RuntimeError(
                f"{self.owner}: token_stat_scope is '{self.scope}' but Algorithm.prepare() was not called with the "
                f"inputs of the scope before the micro-batches"
            )
        return self._stored



class ScopedPart:
    """Mixin for a part whose statistics follow `token_stat_scope`.

    The part sets `self._stats = ScopedStats(name)` and defines `_compute_stats(inputs, all_reduce)`; compose sets
    `scope`, and the learner calls `prepare` for the mini_batch / global scopes.
    """

    _stats: ScopedStats

    @property
    def scope(self) -> str:
        return self._stats.scope

    @scope.setter
    def scope(self, value: str) -> None:
        self._stats.scope = check_scope(value)

    def prepare(self, inputs, all_reduce: AllReduce = local_all_reduce) -> None:
        self._stats.prepare(inputs, self._compute_stats, all_reduce)
