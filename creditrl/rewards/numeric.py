"""Exact numeric answer reward: 1 if the response's final answer equals the ground truth, else 0.

Answer extraction, in order: the content of the last `\\boxed{...}`; the text after the last "answer is" /
"Answer:" / "A:"; otherwise the last number in the response. Numbers are parsed tolerantly ("1,234", "+5",
"3.50", "7/2", "-0"), and compared with a relative/absolute tolerance. When either side is not a plain
number (LaTeX, fractions with braces, expressions), `math_verify` decides equivalence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from creditrl.rewards.base import REWARDS, RewardResult, RewardSample

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_MARKER = re.compile(r"(?:answer is|answer:|\bA:)\s*(.*)", re.IGNORECASE | re.DOTALL)


def parse_number(text: str) -> float | None:
    """Parse a plain number ("1,234", "-3.5", "7/2"); None if `text` is not one."""
    t = text.strip().rstrip(".").replace(",", "").replace(" ", "")
    t = t.strip("$")
    if not t or not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?", t):
        return None
    try:
        if "/" in t:
            num, den = t.split("/")
            return float(Fraction(num) / Fraction(den)) if int(den) != 0 else None
        return float(t)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(response: str) -> str | None:
    """The final-answer text of a response (see module docstring), or None."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    marker = list(_MARKER.finditer(response))
    if marker:
        tail = marker[-1].group(1).strip()
        nums = _NUMBER.findall(tail)
        if nums:
            return nums[0]
        if tail:
            return tail.splitlines()[0].strip()
    nums = _NUMBER.findall(response)
    return nums[-1] if nums else None


def answers_match(predicted: str, truth: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    p, t = parse_number(predicted), parse_number(truth)
    if p is not None and t is not None:
        return math.isclose(p, t, rel_tol=rel_tol, abs_tol=abs_tol)
    from math_verify import parse, verify  # slow import; only for non-plain answers

    return bool(verify(parse(f"${truth}$"), parse(f"${predicted}$")))


@dataclass
class NumericAnswerConfig:
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9


@REWARDS.register("numeric_answer", NumericAnswerConfig)
def numeric_answer(cfg: NumericAnswerConfig):
    """1.0 when the extracted final answer equals the ground truth (tolerant numeric parsing), else 0.0."""

    def score(sample: RewardSample) -> RewardResult:
        pred = extract_answer(sample.response)
        if pred is None:
            return RewardResult(0.0, "no answer found")
        ok = answers_match(pred, sample.answer, cfg.rel_tol, cfg.abs_tol)
        return RewardResult(1.0 if ok else 0.0, "" if ok else "wrong answer")

    return score
