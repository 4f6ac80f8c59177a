"""Load prompt datasets with `datasets`, validate fields, render the template, tokenize in batches.

Sources (creditrl/data/sources.py): local .jsonl / .json / .parquet / .csv files and `save_to_disk` folders
(``folder:split`` for a DatasetDict).

Prompts (`data.prompt_field`, a column or a dotted path into a dict column such as ``extra_info.question``):

- text: rendered with `data.template`: ``auto`` (default) keeps the text as it is (``"{prompt}"``), ``chat``
  sends it as one user turn through ``tokenizer.apply_chat_template``, any other value is a Python format string
  over the row's columns with ``{prompt}`` = the prompt text;
- a list of messages ``[{"role": ..., "content": ...}, ...]`` (TRL conversational data, verl parquet):
  rendered with ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`` under
  ``auto`` and ``chat``; a format-string template with message-list prompts is an error
  (creditrl/data/messages.py has the rules).

`data.system_prompt` is prepended as a system message to every conversation (text prompts too, under ``auto``
and ``chat``, through the chat template); a row whose messages start with a system turn keeps its own.

Answers (`data.answer_field`, dotted paths too, e.g. verl's ``reward_model.ground_truth``) become text per
`data.answer_format` (creditrl/data/answers.py: GSM8K ``####`` extraction, numbers as text).

Every column of the row reaches the rewards as `PromptRow.fields` (nested values as they are), the conversation
as `PromptRow.messages`. Errors name the file, the row, the field and the fix.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from creditrl.data.answers import extract_answer
from creditrl.data.errors import DataError
from creditrl.data.fields import MISSING, resolve, top_column
from creditrl.data.messages import is_message_list, render_chat, require_chat_template, validate_messages, with_system
from creditrl.data.sources import read_source

log = logging.getLogger(__name__)

__all__ = ["DataError", "PromptDataset", "PromptRow", "load_prompt_datasets", "load_rows"]

MAP_BATCH_SIZE = 512  # rows rendered and tokenized per datasets.map batch


@dataclass(frozen=True)
class PromptRow:
    key: str  # stable id: "<file name>:<row index>" (used for cross-step per-prompt state)
    prompt: str  # templated prompt text
    answer: str
    prompt_ids: tuple[int, ...]
    fields: dict = field(default_factory=dict, compare=False)  # the raw row: every column, nested values as-is
    # the conversation given to the chat template (system turn included, plain dicts); None for text prompts
    # rendered without it (a format string, or template auto with no system prompt = "{prompt}")
    messages: tuple | None = field(default=None, compare=False)


class PromptDataset:
    def __init__(self, rows: list[PromptRow]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PromptRow:
        return self.rows[i]


def is_format_template(template: str) -> bool:
    """True for a Python format-string template (anything but ``auto`` and ``chat``)."""
    return template not in ("auto", "chat")


def _check_columns(ds, source: str, paths: tuple[tuple[str, str], ...]) -> None:
    """Every (dotted) field path starts at a column of `ds`; nested keys of struct columns (parquet, and json
    objects with the same keys in every row) are checked here, others row by row."""
    cols = ds.column_names
    for path, key in paths:
        col = top_column(path, cols)
        if col is None:
            hint = (" (a dotted path reads a dict column: the part before the first '.' must be a column)"
                    if "." in path else "")
            raise DataError(f"data file {source} has no field '{path}' ({key}){hint}; its fields are: "
                            f"{', '.join(cols)}. Set {key} to the right column name.")
        if col == path:
            continue
        feat, walked = ds.features[col], [col]
        for part in path[len(col) + 1:].split("."):
            if not isinstance(feat, dict):
                break  # lists and untyped values: checked row by row
            if part not in feat:
                at = ".".join(walked)
                raise DataError(f"data file {source}: field '{path}' ({key}) does not exist: '{at}' has no key "
                                f"'{part}'; its keys are: {', '.join(feat)}. Fix: set {key} to one of "
                                f"{', '.join(at + '.' + k for k in feat)}.")
            feat = feat[part]
            walked.append(part)


def _format(template: str, row: dict, text: str, source: str) -> str:
    fields = dict(row)
    fields["prompt"] = text
    try:
        return template.format(**fields)
    except KeyError as e:
        raise DataError(f"data.template refers to field {e} that rows of {source} do not have "
                        f"(fields: {', '.join(row)})") from None
    except (ValueError, IndexError, AttributeError, TypeError) as e:
        raise DataError(f"data.template={template!r} can not be filled from rows of {source}: {e}. Fix: placeholders "
                        f"are {{field}}; write literal braces doubled ({{{{ and }}}})") from None


class _BatchRenderer:
    """The `datasets.map(batched=True, with_indices=True)` function: validate, render and tokenize a batch.

    Returns the columns _text, _answer, _ids; the conversations go to `self.messages` (row index -> list of
    dicts) because their extra keys do not fit one Arrow type."""

    def __init__(self, source: str, template: str, tokenizer, system_prompt: str | None, answer_format: str,
                 prompt_field: str, answer_field: str):
        self.source, self.template, self.tokenizer = source, template, tokenizer
        self.system_prompt, self.answer_format = system_prompt, answer_format
        self.prompt_field, self.answer_field = prompt_field, answer_field
        self.messages: dict[int, list[dict]] = {}

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        keys = list(batch)
        texts, answers = [], []
        for j, i in enumerate(indices):
            text, answer = self.render(i, {k: batch[k][j] for k in keys})
            texts.append(text)
            answers.append(answer)
        ids = [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return {"_text": texts, "_answer": answers, "_ids": ids}

    def render(self, i: int, row: dict) -> tuple[str, str]:
        where = f"data file {self.source}, row {i}"
        values = {}
        for path, key in ((self.prompt_field, "data.prompt_field"), (self.answer_field, "data.answer_field")):
            v, problem = resolve(row, path)
            if v is MISSING:
                raise DataError(f"{where}: field '{path}' ({key}) does not exist: {problem}. Fix: set {key} to "
                                f"an existing (dotted) field, or fill it in.")
            if v is None:  # str(None) would train on the text "None"
                raise DataError(f"{where}: field '{path}' ({key}) is null (or missing). Fix: fill it in or remove "
                                f"the row.")
            values[key] = v
        prompt, pdesc = values["data.prompt_field"], f"field '{self.prompt_field}' (data.prompt_field)"
        answer = extract_answer(values["data.answer_field"], self.answer_format, where,
                                f"field '{self.answer_field}' (data.answer_field)")
        if is_message_list(prompt):
            if is_format_template(self.template):
                raise DataError(f"{where}: {pdesc} is a list of messages, but data.template={self.template!r} is a "
                                f"format string for text prompts. Fix: data.template: auto (message lists go "
                                f"through the tokenizer's chat template), or point data.prompt_field at a text "
                                f"column.")
            msgs = validate_messages(prompt, where, pdesc)
            require_chat_template(self.tokenizer, f"{where}: {pdesc} is a list of messages, rendered with the chat "
                                                   f"template")
        elif isinstance(prompt, dict):
            raise DataError(f"{where}: {pdesc} is a dict (keys: {', '.join(map(str, prompt))}), neither text nor a "
                            f"list of messages. Fix: a dotted path to the text, e.g. data.prompt_field: "
                            f"{self.prompt_field}.{next(iter(prompt), 'key')}")
        else:
            text = str(prompt)
            if not text.strip():
                raise DataError(f"{where}: {pdesc} is empty. Fix: fill it in or remove the row.")
            if is_format_template(self.template):
                return _format(self.template, row, text, self.source), answer
            if self.template == "auto" and self.system_prompt is None:
                return text, answer
            require_chat_template(self.tokenizer, "data.template=chat" if self.template == "chat" else
                                  "data.system_prompt with text prompts (data.template: auto) needs the chat template")
            msgs = [{"role": "user", "content": text}]
        msgs = with_system(msgs, self.system_prompt)
        self.messages[i] = msgs
        return render_chat(self.tokenizer, msgs, where), answer


def load_rows(files: list[str], prompt_field: str, answer_field: str, template: str, tokenizer,
              max_prompt_tokens: int, *, system_prompt: str | None = None, answer_format: str = "auto",
              role: str = "train", key: str | None = None) -> list[PromptRow]:
    """The `PromptRow`s of `files` (see the module docstring); rows whose prompt has more than
    `max_prompt_tokens` tokens are dropped (and counted in the log). `role` ('train' | 'eval') picks the split
    of a DatasetDict folder; `key` is the recipe key named in errors (default from `role`)."""
    import uuid

    rows: list[PromptRow] = []
    dropped = 0
    for f in files:
        ds, name = read_source(f, role, key)
        _check_columns(ds, f, ((prompt_field, "data.prompt_field"), (answer_field, "data.answer_field")))
        fn = _BatchRenderer(f, template, tokenizer, system_prompt, answer_format, prompt_field, answer_field)
        out = ds.map(fn, batched=True, batch_size=MAP_BATCH_SIZE, with_indices=True, remove_columns=ds.column_names,
                     keep_in_memory=True, load_from_cache_file=False, new_fingerprint=uuid.uuid4().hex,
                     desc=f"tokenizing {name}").to_dict()
        n_before = len(rows)
        for i, (text, answer, ids, r) in enumerate(zip(out["_text"], out["_answer"], out["_ids"], ds.to_list())):
            if len(ids) > max_prompt_tokens:
                dropped += 1
                continue
            msgs = fn.messages.get(i)
            rows.append(PromptRow(f"{name}:{i}", text, answer, tuple(ids), r,
                                  tuple(msgs) if msgs is not None else None))
        log.info("data: %d prompts from %s (%s)", len(rows) - n_before, f,
                 "chat template" if fn.messages else f"template {template!r}")
    if dropped:
        log.warning("dropped %d prompts longer than data.max_prompt_tokens=%d", dropped, max_prompt_tokens)
    if not rows:
        raise DataError(f"no usable rows in {', '.join(files)} (all prompts longer than data.max_prompt_tokens?)")
    return rows


def load_prompt_datasets(cfg, tokenizer, seed: int) -> tuple[PromptDataset, PromptDataset]:
    """(train, eval) datasets per `DataConfig`; without eval files, a seeded `eval_fraction` split of train."""
    opts = {"system_prompt": getattr(cfg, "system_prompt", None),
            "answer_format": getattr(cfg, "answer_format", "auto")}
    train = load_rows(cfg.train_files, cfg.prompt_field, cfg.answer_field, cfg.template, tokenizer,
                      cfg.max_prompt_tokens, role="train", **opts)
    if cfg.eval_files:
        evals = load_rows(cfg.eval_files, cfg.prompt_field, cfg.answer_field, cfg.template, tokenizer,
                          cfg.max_prompt_tokens, role="eval", **opts)
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
