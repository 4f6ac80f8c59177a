"""Exact numeric answer reward: 1 if the response's final answer equals the ground truth, else 0.

Answer extraction (extract.py), in order: the content of the last `\\boxed{...}`; the first number after the
last "answer is" / "answer:" marker (or the marked text itself when it has no number); otherwise the last
number in the response. Numbers are parsed tolerantly ("1,234", "+5", "3.50", "7/2", "-0") and compared with
a relative/absolute tolerance. When either side is not a plain number (LaTeX, fractions with braces,
expressions), `math_verify` decides equivalence (math_answer.py is the full math reward).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from creditrl.rewards.base import REWARDS, RewardResult, RewardSample
from creditrl.rewards.extract import NUMBER, after_marker, last_boxed, last_number


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
    boxed = last_boxed(response)
    if boxed:
        return boxed
    marked = after_marker(response)
    if marked:
        nums = NUMBER.findall(marked)
        return nums[0] if nums else marked
    return last_number(response)


def answers_match(predicted: str, truth: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    p, t = parse_number(predicted), parse_number(truth)
    if p is not None and t is not None:
        return math.isclose(p, t, rel_tol=rel_tol, abs_tol=abs_tol)
    from creditrl.rewards.math_answer import math_equal  # slow import; only for non-plain answers

    return math_equal(predicted, truth)


@dataclass
class NumericAnswerConfig:
    rel_tol: float = 1e-6  # relative tolerance of math.isclose for plain numbers
    abs_tol: float = 1e-9  # absolute tolerance of math.isclose for plain numbers


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
