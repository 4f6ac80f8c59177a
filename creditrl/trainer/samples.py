"""The samples table: a few rollout rows of a step, readable (`logging.samples_every` / `samples_per_step`).

Pure functions: `sample_rows` turns the first rows of a step's RolloutBatch (after the learner stages, so its
advantages are filled in) into dicts; the loop writes them to RUN_DIR/samples.jsonl and, as a table, to the
trackers that take tables (W&B). Each row:

    prompt, completion      decoded text (special tokens dropped)
    reward                  the total (weighted) reward of the row
    reward/<function>       each reward function's unweighted score (reward.functions order)
    advantage               the row's advantage: the mean over its response tokens (token-level advantages)
    response_length         response tokens
    finished                the response ended with a stop / EOS (False: cut at rollout.max_new_tokens)
    group                   the row's group (prompt) index within the step
"""

from __future__ import annotations

from typing import Any

from creditrl.learner.batch import RolloutBatch


def row_advantages(batch: RolloutBatch) -> list[float | None]:
    """Mean advantage over each row's response tokens; None where the batch has no advantages yet."""
    adv = batch.advantages
    if adv is None:
        return [None] * len(batch)
    if adv.dim() == 1:
        return [float(a) for a in adv]
    mask = batch.mask.to(adv.dtype)
    per_row = (adv * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    return [float(a) for a in per_row]


def sample_rows(batch: RolloutBatch, tokenizer, reward_names: list[str], k: int) -> list[dict[str, Any]]:
    """The first `k` rows of `batch` as sample records (the keys in the module docstring)."""
    n = min(k, len(batch))
    lengths = batch.response_lengths.tolist()
    advantages = row_advantages(batch)
    prompts = tokenizer.batch_decode([batch.prompt_ids[i] for i in range(n)], skip_special_tokens=True)
    completions = tokenizer.batch_decode([batch.response_ids[i, :lengths[i]].tolist() for i in range(n)],
                                         skip_special_tokens=True)
    first_group = int(batch.group_ids[0]) if n else 0
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"prompt": prompts[i], "completion": completions[i],
                               "reward": float(batch.rewards[i])}
        if batch.reward_components is not None:
            for j, name in enumerate(reward_names[: batch.reward_components.shape[1]]):
                row[f"reward/{name}"] = float(batch.reward_components[i, j])
        row["advantage"] = advantages[i]
        row["response_length"] = int(lengths[i])
        row["finished"] = bool(batch.finished[i])
        row["group"] = int(batch.group_ids[i]) - first_group
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, data) of rows for a tracker table: the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns, [[row.get(c) for c in columns] for row in rows]
