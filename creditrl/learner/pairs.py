"""Preference pairs as learner batches: the 2B-row layout and the data-parallel micro-batch plan.

A pair batch of B pairs is a `RolloutBatch` of 2B sequences, chosen responses first (rows 0..B-1) and rejected
ones after (rows B..2B-1), so chosen and rejected run in one concatenated forward (spec §15.1) through the RL
learner's micro-batch and token-stats code.

Plan of one preference step (`plan_pairs`): the pairs are dealt to `world` ranks balanced by their padded
footprint (`dp_split.plan_step`, one mini-batch = all pairs), and each rank splits its pairs into micro-batches
whose two sequences per pair fit `micro_batch_tokens_per_worker`; a pair's chosen and rejected always share a
micro-batch. Ranks with fewer micro-batches get padding micro-batches (lockstep, as for RL). With world = 1 the
plan is `pair_micro_batches`, the single-process split.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from creditrl.learner.batch import RolloutBatch, partition_by_tokens
from creditrl.learner.dp_split import MicroSpec, plan_step


class Pair(Protocol):
    """What the learner reads of a preference pair (`creditrl.preference.data.PreferencePair`)."""

    key: str  # stable across runs: keys the reference cache
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]  # response tokens incl. EOS
    rejected_ids: tuple[int, ...]


def pair_batch(pairs: Sequence[Pair], pad_id: int) -> RolloutBatch:
    """2B-row batch: chosen responses in rows 0..B-1, rejected in rows B..2B-1 (response-aligned, right-padded)."""
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    t = max(len(r) for r in responses)
    ids = torch.full((len(responses), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(responses), t)
    for i, r in enumerate(responses):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    prompts = [list(p.prompt_ids) for p in pairs] * 2
    keys = [f"{p.key}/chosen" for p in pairs] + [f"{p.key}/rejected" for p in pairs]
    n = len(responses)
    return RolloutBatch(prompts, ids, mask, torch.zeros_like(mask), torch.zeros(n), torch.arange(n) % len(pairs),
                        keys, torch.ones(n, dtype=torch.bool))


def pair_lengths(pairs: Sequence[Pair]) -> list[int]:
    """The padded per-sequence footprint of each pair: len(prompt) + max(len(chosen), len(rejected))."""
    return [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]


def pair_micro_batches(pairs: Sequence[Pair], tokens_per_micro_batch: int) -> list[list[int]]:
    """Consecutive groups of pair indices whose padded 2-sequence footprint fits the token budget."""
    return partition_by_tokens(pair_lengths(pairs), max(1, tokens_per_micro_batch // 2))


def plan_pairs(pairs: Sequence[Pair], tokens_per_micro_batch: int, world: int = 1) -> tuple[tuple[MicroSpec, ...], ...]:
    """[world] lockstep micro-batches of pair indices (see the module docstring); padding specs have real=False."""
    if not pairs:
        raise ValueError("a preference step needs at least one pair")
    (plan,) = plan_step(pair_lengths(pairs), len(pairs), world, max(1, tokens_per_micro_batch // 2))
    return plan.micro
