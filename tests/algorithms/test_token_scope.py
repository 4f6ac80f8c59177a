"""token_stat_scope utility: order statistics and reductions, single process and simulated multi-rank."""

from __future__ import annotations

import threading

import pytest
import torch

from creditrl.algorithms.token_scope import (
    ScopedStats, check_scope, kth_largest, kth_smallest, local_all_reduce, scope_count, scope_max, scope_min,
    scope_sum,
)


def explicit_reduce(x, op):
    """A single-rank all-reduce that is not `local_all_reduce`, so the bisection (distributed) path runs."""
    return x


def run_ranks(shards, fn):
    """Run fn(shard, all_reduce) on one thread per shard with a barrier-based all-reduce; return the results."""
    n = len(shards)
    barrier = threading.Barrier(n)
    slots: list = [None] * n
    lock = threading.Lock()
    results: list = [None] * n

    def make_reduce(rank):
        def reduce(x, op):
            slots[rank] = x.clone()
            barrier.wait()
            with lock:
                stacked = torch.stack([s.to(torch.float64) if s.is_floating_point() else s for s in slots])
            out = {"sum": stacked.sum(0), "min": stacked.amin(0), "max": stacked.amax(0)}[op].to(x.dtype)
            barrier.wait()  # everyone has read before the next reduce overwrites the slots
            return out
        return reduce

    def worker(rank):
        results[rank] = fn(shards[rank], make_reduce(rank))

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_largest_matches_sorting_on_both_paths(dtype):
    g = torch.Generator().manual_seed(0)
    values = (torch.randn(97, generator=g) * 3).to(dtype)
    ordered = sorted(values.double().tolist(), reverse=True)
    for k in (1, 2, 17, 50, 97):
        assert kth_largest(values, k) == ordered[k - 1]
        assert kth_largest(values, k, explicit_reduce) == ordered[k - 1]
        assert kth_smallest(values, k) == ordered[-k]
        assert kth_smallest(values, k, explicit_reduce) == ordered[-k]


def test_kth_largest_with_ties_zero_and_negative_zero():
    values = torch.tensor([0.0, -0.0, 2.0, 2.0, -1.5, -1e-300, 1e-300], dtype=torch.float64)
    for path in (local_all_reduce, explicit_reduce):
        assert kth_largest(values, 1, path) == 2.0
        assert kth_largest(values, 2, path) == 2.0
        assert kth_largest(values, 3, path) == 1e-300
        assert kth_largest(values, 4, path) == 0.0
        assert kth_smallest(values, 1, path) == -1.5
        assert kth_smallest(values, 2, path) == -1e-300


def test_kth_largest_across_simulated_ranks_gathers_only_scalars():
    g = torch.Generator().manual_seed(1)
    full = torch.randn(200, generator=g, dtype=torch.float64)
    shards = [full[:70], full[70:71], full[71:71], full[71:]]  # uneven, one rank has nothing
    ordered = sorted(full.tolist(), reverse=True)
    for k in (1, 40, 200):
        results = run_ranks(shards, lambda shard, reduce: kth_largest(shard, k, reduce))
        assert results == [ordered[k - 1]] * 4


def test_scope_reductions_across_ranks():
    values = torch.tensor([[1.0, 5.0, -2.0], [3.0, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    shards = [(values[:1], mask[:1]), (values[1:], mask[1:])]
    out = run_ranks(shards, lambda s, r: (scope_count(s[1], r), scope_sum(*s, r).item(), scope_max(*s, r).item(),
                                          scope_min(*s, r).item()))
    assert out[0] == out[1] == (3, 9.0, 5.0, 1.0)


def test_empty_scope_reductions_and_errors():
    v = torch.zeros(2, 3)
    m = torch.zeros(2, 3)
    assert scope_count(m) == 0
    assert scope_max(v, m).item() == float("-inf")
    assert scope_min(v, m).item() == float("inf")
    assert scope_sum(v, m).item() == 0.0
    with pytest.raises(ValueError, match="out of range"):
        kth_largest(torch.tensor([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="finite"):
        kth_largest(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="token_stat_scope"):
        check_scope("per_rank")
    with pytest.raises(ValueError, match="all-reduce op"):
        local_all_reduce(torch.ones(1), "mean")


def test_scoped_stats_micro_batch_computes_and_wider_scopes_need_prepare():
    calls = []

    def compute(inputs, reduce):
        calls.append(inputs)
        return sum(inputs)

    holder = ScopedStats("demo")
    assert holder.get([1, 2], compute) == 3
    holder.scope = "mini_batch"
    with pytest.raises(RuntimeError, match="prepare"):
        holder.get([1, 2], compute)
    holder.prepare([10, 20, 30], compute)
    assert holder.get([1, 2], compute) == 60  # the stored scope statistic, not the micro-batch's
