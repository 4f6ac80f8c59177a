"""`RolloutBatch`: one step's samples and every per-token tensor computed for them, plus micro-batching.

Token layout: sample i is `prompt_ids[i] + response_ids[i]`. Per-token tensors are response-aligned [B, T]
(right-padded, `mask` marks real response tokens). Micro-batches are built on the fly as right-padded
[b, L] `input_ids`; response token t of sample i sits at position `prompt_len[i] + t` and is predicted by the
hidden state at `prompt_len[i] + t - 1`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    prompt_ids: list[list[int]]  # [B]
    response_ids: Tensor  # [B, T] long, right-padded
    mask: Tensor  # [B, T] float
    rollout_logprobs: Tensor  # [B, T] sampler log-probs
    rewards: Tensor  # [B] float32 (sum of weighted reward functions)
    group_ids: Tensor  # [B] long, one id per prompt
    prompt_keys: list[str]  # [B]
    finished: Tensor  # [B] bool, ended with EOS
    weight_version: int = 0
    reward_components: Tensor | None = None  # [B, K] unweighted score of each reward function (reward.fns order)
    reward_weights: Tensor | None = None  # [K] their weights
    stats: dict[str, Tensor] = field(default_factory=dict)  # old_logprobs, ref_logprobs, old_entropy, ... [B, T]
    advantages: Tensor | None = None  # [B, T]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def response_lengths(self) -> Tensor:  # [B]
        return self.mask.sum(-1).long()


@dataclass
class MicroBatch:
    index: Tensor  # [b] rows of the RolloutBatch
    input_ids: Tensor  # [b, L] right-padded prompt + response
    attention_mask: Tensor  # [b, L]
    rows: Tensor  # [N] row (0..b-1) of each response token in the micro-batch
    positions: Tensor  # [N] position in input_ids of the hidden state that predicts the token
    targets: Tensor  # [N] the response token ids
    mask: Tensor  # [b, T] response mask of these rows


def partition_by_tokens(lengths: list[int], budget: int) -> list[list[int]]:
    """Split consecutive items into groups whose padded size (count x longest) stays within `budget` tokens.

    An item longer than the budget gets a group of its own. Order is kept, so the same call on the same
    lengths always gives the same partition (the old-log-prob pass and the training pass must agree: verl#6280).
    """
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, n) > budget:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        groups.append(current)
    return groups


def make_micro_batch(batch: RolloutBatch, index: list[int], pad_id: int) -> MicroBatch:
    idx = torch.tensor(index, dtype=torch.long)
    lens = batch.response_lengths[idx].tolist()
    seqs = [batch.prompt_ids[i] + batch.response_ids[i, :n].tolist() for i, n in zip(index, lens)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, positions, targets = [], [], []
    for r, (i, s, n) in enumerate(zip(index, seqs, lens)):
        input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[r, : len(s)] = 1
        p = len(batch.prompt_ids[i])
        rows += [r] * n
        positions += list(range(p - 1, p - 1 + n))
        targets += batch.response_ids[i, :n].tolist()
    return MicroBatch(
        index=idx,
        input_ids=input_ids,
        attention_mask=attention,
        rows=torch.tensor(rows, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        mask=batch.mask[idx],
    )


def scatter_tokens(values: Tensor, mb: MicroBatch) -> Tensor:
    """Per-token values [N] of a micro-batch -> response-aligned [b, T] (zeros at padding), differentiable."""
    out = torch.zeros(mb.mask.shape, dtype=values.dtype, device=values.device)
    cols = response_columns(mb)
    return out.index_put((mb.rows, cols), values)


def response_columns(mb: MicroBatch) -> Tensor:
    """Column t (response position) of each token in [N]."""
    cols = torch.zeros_like(mb.rows)
    if len(mb.rows) == 0:
        return cols
    starts = torch.ones_like(mb.rows, dtype=torch.bool)
    starts[1:] = mb.rows[1:] != mb.rows[:-1]
    seg_start = torch.cummax(torch.where(starts, torch.arange(len(mb.rows)), torch.zeros_like(mb.rows)), 0).values
    return torch.arange(len(mb.rows)) - seg_start
