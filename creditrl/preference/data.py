"""Preference pairs: loading (prompt, chosen, rejected) rows and the synthetic arithmetic pairs.

Each response is tokenize(text + suffix) + EOS; the EOS is a scored response token (TDPO includes it, §15.2).
How the learner batches pairs (chosen and rejected rows in one forward, micro-batches, the data-parallel split)
is `creditrl/learner/pairs.py`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from creditrl.data import DataError
from creditrl.data.dataset import load_rows
from creditrl.data.synthetic import add_without_carry

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
               max_prompt_tokens: int = 128, response_suffix: str = "",
               system_prompt: str | None = None) -> list[PreferencePair]:
    """Pairs from local data sources (creditrl/data/sources.py) with configurable field names (errors name the
    file and field); prompts are rendered as the RL prompts are (`data.template`, `data.system_prompt`)."""
    rows = load_rows(files, prompt_field, chosen_field, template, tokenizer, max_prompt_tokens,
                     system_prompt=system_prompt, answer_format="raw")
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
