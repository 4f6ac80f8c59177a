"""Countdown reward: 1 if the response's scratchpad reaches the target with the given numbers, else 0.

The check is `check_solution` (data generator: creditrl/data/countdown.py): every `;`-separated step must be `a op b = c` (a regex, no
eval of text) with a and b from the current pool (the given numbers, each at most once, and earlier results), exact
non-negative integer arithmetic (division only when exact, never by zero), and the last result equal to the target.
The numbers and the target come from the dataset row (`nums`, `target` columns; `sample.meta`), or else are parsed
from a prompt of the form "3,7,12,15 to 41:" (then the target may also come from `answer`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from creditrl.rewards.base import REWARDS, RewardResult, RewardSample

# Arithmetic and verification (no eval of text: a regex per step, exact integer arithmetic)
STEP = re.compile(r"(\d{1,7})([-+*/])(\d{1,7})=(-?\d{1,9})")


def apply_op(a: int, op: str, b: int) -> int | None:
    """a op b on integers; None for division by zero or inexact division."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or a % b:
        return None
    return a // b


def check_solution(response: str, nums: list[int], target: int) -> tuple[bool, str]:
    """(correct, reason). Correct: every `;`-separated step is `a op b = c` with a and b taken from the current
    pool (given numbers, each at most once, plus earlier results), c = a op b exactly (non-negative; division exact,
    not by zero), and the last c is the target. Spaces and one trailing `;` or `.` are tolerated."""
    text = response.replace(" ", "").strip().rstrip(".;")
    if not text:
        return False, "empty response"
    pool = list(nums)
    value = None
    for i, step in enumerate(text.split(";")):
        m = STEP.fullmatch(step)
        if m is None:
            return False, f"step {i + 1} malformed: {step[:30]!r}"
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        for x in (a, b):
            if x not in pool:
                return False, f"step {i + 1} uses {x}, which is not available (given numbers at most once)"
            pool.remove(x)
        if op == "/" and b == 0:
            return False, f"step {i + 1} divides by zero"
        value = apply_op(a, op, b)
        if value is None:
            return False, f"step {i + 1} inexact division"
        if value != c:
            return False, f"step {i + 1} wrong arithmetic: {a}{op}{b} is {value}, not {c}"
        if c < 0:
            return False, f"step {i + 1} negative result"
        pool.append(c)
    if value != target:
        return False, f"ends at {value}, not the target {target}"
    return True, ""



_PROMPT = re.compile(r"(\d+(?:\s*,\s*\d+)+)\s*to\s*(\d+)\s*:")


def problem_of(sample: RewardSample) -> tuple[list[int], int] | None:
    """(numbers, target) of a sample: from its row's `nums`/`target` columns, else parsed from the prompt."""
    nums, target = sample.meta.get("nums"), sample.meta.get("target")
    if isinstance(nums, (list, tuple)) and target is not None:
        try:
            return [int(x) for x in nums], int(target)
        except (TypeError, ValueError):
            pass
    m = _PROMPT.search(sample.prompt or "")
    if m is None:
        return None
    return [int(x) for x in m.group(1).split(",")], int(m.group(2))


@dataclass
class CountdownConfig:
    format_score: float = 0.0  # score of a well-formed but wrong scratchpad (TinyZero uses 0.1); 0 = exact only


@REWARDS.register("countdown", CountdownConfig)
def countdown(cfg: CountdownConfig):
    """1.0 when the scratchpad reaches the target using the given numbers at most once each, else 0.0
    (`format_score` for a response whose every step is well-formed and whose arithmetic is right)."""

    def score(sample: RewardSample) -> RewardResult:
        problem = problem_of(sample)
        if problem is None:
            return RewardResult(0.0, "no numbers/target in the row or prompt")
        ok, reason = check_solution(sample.response, *problem)
        if ok:
            return RewardResult(1.0)
        partial = cfg.format_score if reason.startswith("ends at") else 0.0
        return RewardResult(partial, reason)

    return score
