"""Math answer reward: extract the final answer, decide equivalence with math-verify, under a time limit.

    score = correct_score    if the extracted answer is equivalent to the ground truth
            wrong_score      if an answer was found but is not equivalent (format credit when > 0)
            no_answer_score  if no answer could be extracted (e.g. -1 for the DCPO reward, algorithms §10.4)

Equivalence is math-verify's (`parse` + `verify`, strict mode): numbers within 6 decimals (so 0.333333 equals
1/3 but 0.33 does not), LaTeX (`\\frac`, `\\dfrac`, `\\sqrt`, `^\\circ`, `\\%`), text units stripped
(`5\\text{ cm}` equals 5), sets, open/closed intervals, equations (`x=2` equals 2), symbolic simplification.
One correction on top of math-verify 0.9.0: an interval is never equal to a finite set, although math-verify
accepts gold `(1,2)` against `\\{1,2\\}` (a pair or an interval is not the set of its endpoints).

The whole parse + verify runs under `timeout_s` (timeouts.py, SIGALRM in the main thread); sympy can take
minutes on adversarial expressions. A timeout scores `wrong_score` with `failed=True`, counted in the metrics.
math-verify's own integer-second alarms are turned off so the two timers never fight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from creditrl.rewards.base import REWARDS, RewardResult, RewardSample
from creditrl.rewards.extract import DEFAULT_STRATEGIES, check_strategies, extract_answer, last_boxed
from creditrl.rewards.timeouts import RewardTimeout, deadline


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its own timeout is off; ours (timeouts.deadline) replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _parse(latex: str) -> list:
    from math_verify import parse  # ~0.5 s import; only workers that score math pay it

    return parse(f"${latex}$", parsing_timeout=None)


def _interval_vs_set(gold: list, pred: list) -> bool:
    """True when one side is an interval and the other a finite set (never equal; see module docstring)."""
    from sympy import FiniteSet, Interval

    g = next((x for x in gold if not isinstance(x, str)), None)
    p = next((x for x in pred if not isinstance(x, str)), None)
    return (isinstance(g, Interval) and isinstance(p, FiniteSet)) or (
        isinstance(g, FiniteSet) and isinstance(p, Interval))


def math_equal(predicted: str, truth: str) -> bool:
    """Is the answer `predicted` mathematically equivalent to `truth` (both LaTeX or plain text)?"""
    from math_verify import verify

    gold, pred = _parse(truth), _parse(predicted)
    if not gold or not pred or _interval_vs_set(gold, pred):
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


@dataclass
class MathAnswerConfig:
    # Extraction strategies tried in order: boxed, answer_is, hashes, last_number (see extract.py).
    extract: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    gold_boxed: bool = False  # the dataset answer is a full solution: compare against its last \boxed{}
    timeout_s: float = 5.0  # per-sample limit for parse + verify
    correct_score: float = 1.0  # score of an answer equivalent to the ground truth
    wrong_score: float = 0.0  # > 0 gives format credit for a well-formed but wrong answer
    no_answer_score: float = 0.0  # score when no strategy extracts an answer

    def __post_init__(self):
        check_strategies(self.extract)
        if self.timeout_s <= 0:
            raise ValueError(f"math_answer timeout_s must be > 0, got {self.timeout_s}")


@REWARDS.register("math_answer", MathAnswerConfig)
def math_answer(cfg: MathAnswerConfig):
    """Math-verify equivalence of the extracted final answer, with per-sample timeout and format credit."""

    def score(sample: RewardSample) -> RewardResult:
        found = extract_answer(sample.response, cfg.extract)
        if found is None:
            return RewardResult(cfg.no_answer_score, "no answer found")
        pred, _ = found
        truth = (last_boxed(sample.answer) or sample.answer) if cfg.gold_boxed else sample.answer
        try:
            with deadline(cfg.timeout_s):
                ok = math_equal(pred, truth)
        except RewardTimeout:
            return RewardResult(cfg.wrong_score, f"math-verify timed out after {cfg.timeout_s:g}s", failed=True)
        if ok:
            return RewardResult(cfg.correct_score)
        return RewardResult(cfg.wrong_score, f"wrong answer {pred[:60]!r}")

    return score
