"""`RolloutBatch`: one step's samples and every per-token tensor computed for them, plus micro-batching.

Token layout: sample i is `prompt_ids[i] + response_ids[i]`. Per-token tensors are response-aligned [B, T]
(right-padded, `mask` marks real response tokens). Micro-batches are built on the fly in one of two layouts:

- padded: one right-padded row per sample ([b, L] `input_ids`, 2-D attention mask); response token t of sample i
  sits at position `prompt_len[i] + t` and is predicted by the hidden state at `prompt_len[i] + t - 1`.
- packed groups (`train.pack_groups`): the samples of a group share their prompt, so one row holds the prompt
  once followed by the responses back to back, `[p][r_1][r_2]...`, with a block mask: the prompt is causal, each
  response sees the whole prompt and its own earlier tokens, nothing of the other responses, and its position ids
  restart at `prompt_len`. Every response token then has exactly the context and position it has in the padded
  layout (same logits up to float rounding), while the prompt runs once per group instead of once per sample and
  no padding sits between responses. The first token of every response is predicted by the prompt's last hidden
  state. A group is split into several rows when one row would cost more than it saves: the mask is dense, so
  attention grows with the square of the row width (`pack_rows`).
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
    input_ids: Tensor  # [r, L] padded layout: r = b rows of prompt + response; packed: a prompt + its responses
    attention_mask: Tensor  # [r, L] (padded layout) or [r, 1, L, L] bool, True = may attend (packed)
    rows: Tensor  # [N] sample (0..b-1) of each response token in the micro-batch
    positions: Tensor  # [N] position in input_ids of the hidden state that predicts the token
    targets: Tensor  # [N] the response token ids
    mask: Tensor  # [b, T] response mask of these rows
    position_ids: Tensor | None = None  # [r, L] packed layout (None: 0..L-1 in every row)
    seq_rows: Tensor | None = None  # [N] row of input_ids holding the predicting hidden state (None: `rows`)

    def gather(self, hidden: Tensor) -> Tensor:
        """The hidden states that predict the response tokens.  [r, L, H] -> [N, H]"""
        return hidden[self.rows if self.seq_rows is None else self.seq_rows, self.positions]


def model_inputs(mb: MicroBatch, model) -> dict[str, Tensor]:
    """Keyword arguments of a Hugging Face forward for the micro-batch's layout.

    A packed micro-batch's block mask is boolean (what SDPA takes); eager attention adds its mask to the scores,
    so it gets the additive form (0 where allowed, the dtype minimum elsewhere).
    """
    if mb.position_ids is None:
        return {"input_ids": mb.input_ids, "attention_mask": mb.attention_mask}
    mask = mb.attention_mask
    if attention_implementation(model) == "eager":
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
            ~mask, torch.finfo(torch.float32).min)
    return {"input_ids": mb.input_ids, "attention_mask": mask, "position_ids": mb.position_ids}


PACKABLE_ATTENTION = ("sdpa", "eager")  # implementations that take a custom 4-D mask


def attention_implementation(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def packing_width(enabled: bool, *models) -> int:
    """The hidden size `make_micro_batch` packs groups with (its cost model), or 0 for padded rows.

    Packing needs every model that reads the micro-batch (policy, reference, critic) to take a custom 4-D
    mask (SDPA or eager attention; not FlashAttention or flex) and to have no sliding window, which a custom
    mask would silently replace.
    """
    if not enabled:
        return 0
    for model in models:
        if model is None:
            continue
        config = getattr(model, "config", None)
        layer_types = getattr(config, "layer_types", None) or []
        if (attention_implementation(model) not in PACKABLE_ATTENTION or getattr(config, "use_sliding_window", False)
                or "sliding_attention" in layer_types):
            return 0
    hidden = [getattr(getattr(m, "config", None), "hidden_size", 0) for m in models if m is not None]
    return max([h for h in hidden if h] or [1])


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


def make_micro_batch(batch: RolloutBatch, index: list[int], pad_id: int, pack_width: int = 0) -> MicroBatch:
    """The micro-batch of rows `index`: padded rows, or packed groups when `pack_width` (the model's hidden size
    for the cost model, `packing_width`) is set."""
    if pack_width > 0:
        return make_packed_micro_batch(batch, index, pad_id, pack_width)
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


def row_cost(width: int, hidden: int) -> int:
    """Relative forward cost of one row of `width` tokens: the per-token work of the linear layers (~6 H per
    token against attention's ~1 per query-key pair, per layer, in units of 4 H flops) plus the dense mask's
    width^2 query-key pairs."""
    return width * 6 * hidden + width * width


def pack_rows(prompt_len: int, lengths: list[int], hidden: int) -> list[list[int]]:
    """Split one group's responses (their `lengths`, in order) into consecutive runs, one packed row each, choosing
    the run size that minimises the summed `row_cost`. One response per row is the padded layout without padding;
    the whole group in one row shares the prompt the most but costs width^2 attention."""
    best: tuple[int, list[list[int]]] | None = None
    for k in range(1, len(lengths) + 1):
        runs = [list(range(a, min(a + k, len(lengths)))) for a in range(0, len(lengths), k)]
        cost = sum(row_cost(prompt_len + sum(lengths[i] for i in run), hidden) for run in runs)
        if best is None or cost < best[0]:
            best = (cost, runs)
    return best[1] if best else []


def make_packed_micro_batch(batch: RolloutBatch, index: list[int], pad_id: int, hidden: int) -> MicroBatch:
    """Packed-groups layout (module docstring): rows `index` grouped by identical prompt, each group one or more
    rows `[p][r_1][r_2]...` with a block mask; token order in `rows/positions/targets` is the padded layout's.

    Built from Python lists and one vectorised mask: every token carries a segment id (0 = the prompt, k = the
    k-th response of its row, -1 = padding) and a query may attend a causal key of the prompt or of its own
    segment; padding attends itself only (no all-masked rows, whose softmax would be NaN)."""
    idx = torch.tensor(index, dtype=torch.long)
    lens = batch.response_lengths[idx].tolist()
    responses = [ids[:n] for ids, n in zip(batch.response_ids[idx].tolist(), lens)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for r, i in enumerate(index):
        groups.setdefault(tuple(batch.prompt_ids[i]), []).append(r)
    ids_rows, pos_rows, seg_rows = [], [], []
    where: dict[int, tuple[int, int]] = {}  # micro-batch row -> (packed row, offset of its response)
    for prompt, members in groups.items():
        p = len(prompt)
        for run in pack_rows(p, [lens[r] for r in members], hidden):
            ids, pos, seg = list(prompt), list(range(p)), [0] * p
            for k, j in enumerate(run, start=1):
                r = members[j]
                where[r] = (len(ids_rows), len(ids))
                ids += responses[r]
                pos += range(p, p + lens[r])
                seg += [k] * lens[r]
            ids_rows.append(ids)
            pos_rows.append(pos)
            seg_rows.append(seg)
    width = max(len(ids) for ids in ids_rows)
    pad = [width - len(ids) for ids in ids_rows]
    input_ids = torch.tensor([ids + [pad_id] * k for ids, k in zip(ids_rows, pad)], dtype=torch.long)  # [g, W]
    position_ids = torch.tensor([pos + [0] * k for pos, k in zip(pos_rows, pad)], dtype=torch.long)  # [g, W]
    seg = torch.tensor([s + [-1] * k for s, k in zip(seg_rows, pad)], dtype=torch.long)  # [g, W]
    q, k = seg.unsqueeze(2), seg.unsqueeze(1)  # [g, W, 1], [g, 1, W]
    causal = torch.ones((width, width), dtype=torch.bool).tril_()
    allowed = causal & (k != -1) & ((k == 0) | (k == q))  # [g, W, W]
    allowed |= (q == -1) & torch.eye(width, dtype=torch.bool)
    rows, seq_rows, positions, targets = [], [], [], []
    for r, (i, n) in enumerate(zip(index, lens)):
        if n == 0:
            continue
        g, start = where[r]
        rows += [r] * n
        seq_rows += [g] * n
        positions += [len(batch.prompt_ids[i]) - 1] + list(range(start, start + n - 1))
        targets += responses[r]
    return MicroBatch(
        index=idx,
        input_ids=input_ids,
        attention_mask=allowed.unsqueeze(1),
        rows=torch.tensor(rows, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        mask=batch.mask[idx],
        position_ids=position_ids,
        seq_rows=torch.tensor(seq_rows, dtype=torch.long),
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
