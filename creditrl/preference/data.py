"""Preference pairs: loading (prompt, chosen, rejected) rows, the synthetic arithmetic pairs, and pair batches.

A pair batch of B pairs is a `RolloutBatch` of 2B sequences, chosen responses first (rows 0..B-1) and rejected
ones after (rows B..2B-1), so chosen and rejected run in one concatenated forward (spec §15.1) through the RL
trainer's micro-batch and token-stats code. Each response is tokenize(text + suffix) + EOS; the EOS is a scored
response token (TDPO includes it, §15.2).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from creditrl.data import DataError
from creditrl.data.dataset import load_rows
from creditrl.data.synthetic import add_without_carry
from creditrl.learner.batch import RolloutBatch, partition_by_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    key: str  # "<file>:<row>", stable across runs (keys the reference cache)
    prompt: str  # templated prompt text
    answer: str  # the ground-truth answer when the rows have one (task metric), else the chosen text
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]  # response tokens incl. EOS
    rejected_ids: tuple[int, ...]  # response tokens incl. EOS


def encode_response(text: str, tokenizer, suffix: str = "") -> tuple[int, ...]:
    """tokenize(text + suffix) + EOS (no special tokens in front)."""
    return tuple(tokenizer(text + suffix, add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,)


def load_pairs(files: list[str], tokenizer, *, prompt_field: str = "prompt", chosen_field: str = "chosen",
               rejected_field: str = "rejected", answer_field: str | None = None, template: str = "{prompt}",
               max_prompt_tokens: int = 128, response_suffix: str = "") -> list[PreferencePair]:
    """Pairs from local jsonl/parquet files with configurable field names (errors name the file and field)."""
    rows = load_rows(files, prompt_field, chosen_field, template, tokenizer, max_prompt_tokens)
    pairs = []
    for r in rows:
        if rejected_field not in r.fields:
            raise DataError(f"preference data row {r.key} has no field '{rejected_field}' "
                            f"(preference.rejected_field); its fields are: {', '.join(r.fields)}")
        if answer_field is not None and answer_field not in r.fields:
            raise DataError(f"preference data row {r.key} has no field '{answer_field}' (preference.answer_field)")
        chosen, rejected = str(r.fields[chosen_field]), str(r.fields[rejected_field])
        answer = str(r.fields[answer_field]) if answer_field is not None else chosen
        pairs.append(PreferencePair(r.key, r.prompt, answer, r.prompt_ids, encode_response(chosen, tokenizer,
                                    response_suffix), encode_response(rejected, tokenizer, response_suffix)))
    return pairs


_SUM = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*$")


def arithmetic_pair(prompt: str, answer: str) -> dict[str, str] | None:
    """{"prompt", "chosen", "rejected", "answer"} for an "a+b=" row whose no-carry answer is wrong, else None.

    chosen = the true sum; rejected = the "forgot to carry" answer the warm-started model tends to give.
    """
    m = _SUM.match(prompt)
    if m is None:
        raise DataError(f"arithmetic pairs need prompts like '47+5=', got {prompt!r}")
    a, b = int(m.group(1)), int(m.group(2))
    wrong = add_without_carry(a, b)
    if wrong == a + b:
        return None
    return {"prompt": prompt, "chosen": str(a + b), "rejected": str(wrong), "answer": answer}


def write_arithmetic_pairs(task_dir: str | Path, out_dir: str | Path | None = None, unique: bool = True) -> Path:
    """From DIR/data/{train,eval}.jsonl of `creditrl tiny init`, write {train,eval}_pairs.jsonl; return out_dir.

    Rows without a carry (where both procedures agree) make no pair and are skipped; with `unique`, a prompt
    that occurs several times in the task file gives one pair (the task samples prompts with replacement).
    """
    src = Path(task_dir) / "data" if (Path(task_dir) / "data").is_dir() else Path(task_dir)
    out = Path(out_dir) if out_dir is not None else src
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval"):
        path = src / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} not found: run `creditrl tiny init --out DIR` first")
        n, seen = 0, set()
        with open(path) as f, open(out / f"{split}_pairs.jsonl", "w") as g:
            for line in f:
                row = json.loads(line)
                pair = arithmetic_pair(row["prompt"], row["answer"])
                if pair is not None and not (unique and pair["prompt"] in seen):
                    seen.add(pair["prompt"])
                    g.write(json.dumps(pair) + "\n")
                    n += 1
        log.info("wrote %d %s pairs to %s", n, split, out / f"{split}_pairs.jsonl")
    return out


def pair_batch(pairs: list[PreferencePair], pad_id: int) -> RolloutBatch:
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


def pair_micro_batches(pairs: list[PreferencePair], tokens_per_micro_batch: int) -> list[list[int]]:
    """Consecutive groups of pair indices whose padded 2-sequence footprint fits the token budget."""
    lengths = [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    return partition_by_tokens(lengths, max(1, tokens_per_micro_batch // 2))
