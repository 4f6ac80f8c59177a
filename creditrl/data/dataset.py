"""Load prompt datasets from local jsonl/parquet files with `datasets`, validate fields, apply the template.

Errors name the file, the field and the fix: a missing file, an empty file, a missing prompt/answer field.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data problem with a message meant for the user."""


@dataclass(frozen=True)
class PromptRow:
    key: str  # stable id: "<file name>:<row index>" (used for cross-step per-prompt state)
    prompt: str  # templated prompt text
    answer: str
    prompt_ids: tuple[int, ...]
    fields: dict = field(default_factory=dict, compare=False)  # the raw row (e.g. an SFT target field)


class PromptDataset:
    def __init__(self, rows: list[PromptRow]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PromptRow:
        return self.rows[i]


def _read_file(path: Path):
    from datasets import load_dataset

    if not path.is_file():
        raise DataError(f"data file not found: {path}. Fix data.train_files / data.eval_files in the recipe "
                        f"(paths are relative to the directory you run creditrl from).")
    suffix = path.suffix.lower()
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(suffix)
    if kind is None:
        raise DataError(f"data file {path}: unsupported format '{suffix}'; use .jsonl or .parquet")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty: it needs at least one row")
    try:
        ds = load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - datasets raises many types for malformed files
        raise DataError(f"could not read data file {path} as {kind}: {type(e).__name__}: {e}") from None
    if len(ds) == 0:
        raise DataError(f"data file {path} is empty: it needs at least one row")
    return ds


def _render(template: str, row: dict, tokenizer, path: Path) -> str:
    if template == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                             add_generation_prompt=True)
    try:
        return template.format(**row)
    except KeyError as e:
        raise DataError(f"data.template refers to field {e} that rows of {path} do not have "
                        f"(fields: {', '.join(row)})") from None
    except (ValueError, IndexError, AttributeError, TypeError) as e:
        raise DataError(f"data.template={template!r} can not be filled from rows of {path}: {e}. Fix: placeholders "
                        f"are {{field}}; write literal braces doubled ({{{{ and }}}})") from None


def load_rows(files: list[str], prompt_field: str, answer_field: str, template: str, tokenizer,
              max_prompt_tokens: int) -> list[PromptRow]:
    rows: list[PromptRow] = []
    dropped = 0
    for f in files:
        path = Path(f)
        ds = _read_file(path)
        for field_name, key in ((prompt_field, "data.prompt_field"), (answer_field, "data.answer_field")):
            if field_name not in ds.column_names:
                raise DataError(f"data file {path} has no field '{field_name}' ({key}); its fields are: "
                                f"{', '.join(ds.column_names)}. Set {key} to the right column name.")
        for i, r in enumerate(ds):
            for field_name, key in ((prompt_field, "data.prompt_field"), (answer_field, "data.answer_field")):
                if r[field_name] is None:  # str(None) would train on the text "None"
                    raise DataError(f"data file {path}, row {i}: field '{field_name}' ({key}) is null (or missing). "
                                    f"Fix: fill it in or remove the row.")
            if not str(r[prompt_field]).strip():
                raise DataError(f"data file {path}, row {i}: field '{prompt_field}' (data.prompt_field) is empty. "
                                f"Fix: fill it in or remove the row.")
            fields = dict(r)
            fields["prompt"] = str(r[prompt_field])
            text = _render(template, fields, tokenizer, path)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > max_prompt_tokens:
                dropped += 1
                continue
            rows.append(PromptRow(f"{path.name}:{i}", text, str(r[answer_field]), tuple(ids), dict(r)))
    if dropped:
        log.warning("dropped %d prompts longer than data.max_prompt_tokens=%d", dropped, max_prompt_tokens)
    if not rows:
        raise DataError(f"no usable rows in {', '.join(files)} (all prompts longer than data.max_prompt_tokens?)")
    return rows


def load_prompt_datasets(cfg, tokenizer, seed: int) -> tuple[PromptDataset, PromptDataset]:
    """(train, eval) datasets per `DataConfig`; without eval files, a seeded `eval_fraction` split of train."""
    train = load_rows(cfg.train_files, cfg.prompt_field, cfg.answer_field, cfg.template, tokenizer,
                      cfg.max_prompt_tokens)
    if cfg.eval_files:
        evals = load_rows(cfg.eval_files, cfg.prompt_field, cfg.answer_field, cfg.template, tokenizer,
                          cfg.max_prompt_tokens)
        return PromptDataset(train), PromptDataset(evals)
    idx = list(range(len(train)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, int(len(train) * cfg.eval_fraction))
    if n_eval >= len(train):
        raise DataError(f"{len(train)} rows are too few to hold out data.eval_fraction={cfg.eval_fraction}; "
                        f"add rows or give data.eval_files")
    eval_idx = set(idx[:n_eval])
    return (PromptDataset([r for i, r in enumerate(train) if i not in eval_idx]),
            PromptDataset([r for i, r in enumerate(train) if i in eval_idx]))
