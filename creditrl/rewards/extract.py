"""Final-answer extraction from a model response, as a configurable list of strategies tried in order.

| strategy | finds | example response -> answer |
|---|---|---|
| `boxed` | content of the last `\\boxed{...}` / `\\fbox{...}`, nested braces allowed | `so \\boxed{\\frac{1}{2}}.` -> `\\frac{1}{2}` |
| `answer_is` | rest of the sentence after the last "answer is" / "answer:" / "final answer is:" / "A:" | `The answer is $x=5$. So` -> `x=5` |
| `hashes` | rest of the sentence after the last `####` (GSM8K style) | `#### 1,234` -> `1,234` |
| `last_number` | last number (sign, thousands commas, decimals, a/b) | `3 apples, then 7/2` -> `7/2` |

The default order `[boxed, answer_is, last_number]` prefers what the model marked as its answer.
"""

from __future__ import annotations

import re
from typing import Callable

NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")
_MARKER = re.compile(r"(?i:(?:final\s+answer|answer)\s*(?:is\s*:?|:))|\bA:")
_HASHES = re.compile(r"####")
_SENTENCE_END = re.compile(r"\.\s")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _balanced(text: str, open_at: int) -> str | None:
    """Content of the brace group whose `{` is at `open_at`, or None if it never closes."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last closed `\\boxed{...}` (or `\\fbox{...}`)."""
    for m in reversed(list(_BOXED.finditer(text))):
        content = _balanced(text, m.end() - 1)
        if content is not None and content.strip():
            return content.strip()
    return None


def clean_span(span: str) -> str:
    """Strip the decoration around an answer span: $...$, \\(...\\), **bold**, a trailing period or comma."""
    s = span.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip()
        s = s.rstrip(".,;").strip()
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        elif s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        elif len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s.strip("$")
        if s == before:
            break
    return s.strip()


def _rest_of_line(text: str, pattern: re.Pattern) -> str | None:
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].lstrip()
    line = rest.splitlines()[0] if rest else ""
    line = _SENTENCE_END.split(line, maxsplit=1)[0]  # "3. Then ..." -> "3" (a decimal point is kept)
    line = clean_span(line)
    return line or None


def after_marker(text: str) -> str | None:
    """The rest of the sentence after the last "answer is" / "answer:" marker."""
    return _rest_of_line(text, _MARKER)


def after_hashes(text: str) -> str | None:
    """The rest of the sentence after the last `####`."""
    return _rest_of_line(text, _HASHES)


def last_number(text: str) -> str | None:
    nums = NUMBER.findall(text)
    return nums[-1] if nums else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": last_boxed,
    "answer_is": after_marker,
    "hashes": after_hashes,
    "last_number": last_number,
}
DEFAULT_STRATEGIES = ["boxed", "answer_is", "last_number"]


def check_strategies(strategies: list[str]) -> None:
    unknown = [s for s in strategies if s not in EXTRACTORS]
    if unknown or not strategies:
        raise ValueError(f"unknown answer extraction strategy {unknown or '(empty list)'}; "
                         f"choose from {', '.join(EXTRACTORS)}")


def extract_answer(text: str, strategies: list[str] = DEFAULT_STRATEGIES) -> tuple[str, str] | None:
    """(answer, strategy that found it) from the first strategy that finds one, or None."""
    for name in strategies:
        found = EXTRACTORS[name](text)
        if found:
            return found, name
    return None
