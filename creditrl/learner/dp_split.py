"""Data-parallel plan of one step: which rows each learner rank processes, in which micro-batches.

For every mini-batch (consecutive rows, `mini_batch_prompts * n_samples` of them) the rows are dealt to the
`world` ranks balanced by token count (longest-processing-time first: each row, longest first, goes to the rank
with the fewest tokens so far; the Karmarkar-Karp refinement verl uses changes little at these sizes). Each
rank then splits its rows into micro-batches with the single-process `partition_by_tokens`.

Every rank must run the same number of forward/backward calls per mini-batch (ZeRO-3 gathers parameters
collectively in every forward; ZeRO-1/2 reduce gradients at the accumulation boundary), so ranks with fewer
micro-batches get *padding* micro-batches: a real row whose loss is multiplied by 0. The old-log-prob pass
uses the very same plan as the first training pass, so the first on-policy ratio is exactly 1 (verl#6280).
"""

from __future__ import annotations

from dataclasses import dataclass

from creditrl.learner.batch import partition_by_tokens


@dataclass(frozen=True)
class MicroSpec:
    rows: tuple[int, ...]  # rows of the RolloutBatch
    real: bool = True  # False: a padding micro-batch (forward/backward for lockstep, loss x 0)


@dataclass(frozen=True)
class MiniPlan:
    rows: tuple[int, ...]  # all rows of the mini-batch (every rank): the AggregationNorm totals are over these
    micro: tuple[tuple[MicroSpec, ...], ...]  # [world] micro-batches of each rank, equal counts


def balance_rows(rows: list[int], lengths: list[int], world: int) -> list[list[int]]:
    """Deal `rows` to `world` ranks, balancing the sum of `lengths` (LPT greedy); each rank's rows sorted."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for r in sorted(rows, key=lambda r: (-lengths[r], r)):
        k = min(range(world), key=lambda i: (load[i], len(out[i]), i))
        out[k].append(r)
        load[k] += lengths[r]
    return [sorted(o) for o in out]


def plan_step(lengths: list[int], mini_batch_rows: int, world: int, micro_budget: int) -> list[MiniPlan]:
    """The step's mini-batches, each split over `world` ranks into lockstep micro-batches.

    lengths: prompt + response tokens of each row. A rank that got no row of a mini-batch (fewer rows than
    ranks) pads with the mini-batch's first row.
    """
    if mini_batch_rows < 1:
        raise ValueError(f"mini_batch_rows must be >= 1, got {mini_batch_rows}")
    plans = []
    for start in range(0, len(lengths), mini_batch_rows):
        rows = list(range(start, min(start + mini_batch_rows, len(lengths))))
        per_rank = []
        for mine in balance_rows(rows, lengths, world):
            groups = partition_by_tokens([lengths[r] for r in mine], micro_budget) if mine else []
            per_rank.append([MicroSpec(tuple(mine[j] for j in g)) for g in groups])
        depth = max(len(m) for m in per_rank)
        for m in per_rank:
            filler = m[0].rows[:1] if m else (rows[0],)
            m.extend(MicroSpec(filler, real=False) for _ in range(depth - len(m)))
        plans.append(MiniPlan(tuple(rows), tuple(tuple(m) for m in per_rank)))
    return plans
