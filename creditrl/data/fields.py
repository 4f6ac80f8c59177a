"""Row fields by dotted path: `data.prompt_field` / `data.answer_field` like ``reward_model.ground_truth`` (verl)
or ``extra_info.answer`` read a dict column by key path; a number segment indexes a list (``answers.0``).

A column whose name itself contains dots (``"a.b"``) is found first, so flat files keep working.
"""

from __future__ import annotations

from typing import Any

MISSING = object()


def split_path(path: str) -> list[str]:
    return path.split(".")


def top_column(path: str, columns) -> str | None:
    """The column `path` starts at: the whole path when it is a column, else its first segment when that is a
    column, else None."""
    if path in columns:
        return path
    first = split_path(path)[0]
    return first if first in columns else None


def resolve(row: dict, path: str) -> tuple[Any, str]:
    """(value, problem) of `path` in `row`: value is `MISSING` and problem says which key is absent and what the
    keys there are; a present value may be None (null)."""
    if path in row:
        return row[path], ""
    parts = split_path(path)
    cur: Any = row
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth]) or "the row"
        if isinstance(cur, dict):
            if part not in cur:
                keys = ", ".join(map(str, cur)) or "(none)"
                where = "the row's fields are" if depth == 0 else f"'{here}' has the keys"
                return MISSING, f"no key '{part}' ({where}: {keys})"
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit():
            i = int(part)
            if not -len(cur) <= i < len(cur):
                return MISSING, f"'{here}' is a list of {len(cur)} items, it has no item {i}"
            cur = cur[i]
        elif cur is None:
            return MISSING, f"'{here}' is null, so it has no key '{part}'"
        else:
            return MISSING, f"'{here}' is a {type(cur).__name__}, not a dict with the key '{part}'"
    return cur, ""
