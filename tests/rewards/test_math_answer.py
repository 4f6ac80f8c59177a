"""math_answer: equivalence on tricky cases, extraction + scoring options, the per-sample timeout."""

import time

import pytest

from creditrl.rewards import REWARDS, RewardSample
from creditrl.rewards import math_answer as math_mod
from creditrl.rewards.math_answer import MathAnswerConfig, math_equal

EQUIVALENT = [
    # fractions and decimals
    ("0.5", r"\frac{1}{2}"),
    (r"\dfrac12", "1/2"),
    ("0.333333", r"\frac{1}{3}"),  # equal within math-verify's 6 decimals
    ("-0.75", r"-\frac{3}{4}"),
    # latex forms
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    (r"\sqrt{12}", r"2\sqrt{3}"),
    ("1000", "10^{3}"),
    ("(x+1)^2", "x^2+2x+1"),
    # units, percent, degrees, currency, thousands separators
    (r"5\text{ cm}", "5"),
    ("5 cm", "5"),
    ("90", r"90^\circ"),
    ("0.5", r"50\%"),
    (r"\$5", "5"),
    ("1,000", "1000"),
    # intervals and sets
    ("(0,1]", "(0,1]"),
    ("3,2", "2,3"),
    (r"\{1,2\}", "1,2"),
    # equations
    ("x=2", "2"),
    (r"\infty", r"\infty"),
]

NOT_EQUIVALENT = [  # wrong answers that look right
    ("0.33", r"\frac{1}{3}"),  # rounded too early
    ("1.2", "12"),  # misplaced decimal point
    ("3", "-3"),  # sign
    (r"\frac{4}{3}", r"\frac{3}{4}"),  # inverted fraction
    ("3.14", r"\pi"),  # approximation
    ("(0,1)", "(0,1]"),  # open vs half-open interval
    ("(0,1)", "[0,1]"),  # open vs closed interval
    (r"\{1,2\}", "(1,2)"),  # the set of the endpoints is not the interval / pair (math-verify alone says equal)
    ("x<2", r"(-\infty, 2)"),  # a relation is not accepted for an interval gold
    ("1/3", "1/2"),
]


@pytest.mark.parametrize("pred, gold", EQUIVALENT)
def test_equivalent(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize("pred, gold", NOT_EQUIVALENT)
def test_not_equivalent(pred, gold):
    assert not math_equal(pred, gold)


def _score(cfg: MathAnswerConfig, response: str, answer: str):
    return REWARDS.build("math_answer", cfg)(RewardSample("t/0", "q", response, answer))


def test_scores_and_credit_options():
    cfg = MathAnswerConfig(wrong_score=0.1, no_answer_score=-1.0, correct_score=2.0)
    right = _score(cfg, r"... so the result is \boxed{\frac{1}{2}}", "0.5")
    assert (right.score, right.reason, right.failed) == (2.0, "", False)
    wrong = _score(cfg, r"\boxed{0.33}", r"\frac{1}{3}")
    assert wrong.score == 0.1 and "wrong answer" in wrong.reason
    none = _score(MathAnswerConfig(extract=["boxed"], no_answer_score=-1.0), "I think it is 7", "7")
    assert none.score == -1.0 and none.reason == "no answer found"


def test_extraction_order_is_configurable():
    text = r"The answer is 3. \boxed{4}"
    assert _score(MathAnswerConfig(), text, "4").score == 1.0
    assert _score(MathAnswerConfig(extract=["answer_is", "boxed"]), text, "4").score == 0.0
    assert _score(MathAnswerConfig(extract=["answer_is", "boxed"]), text, "3").score == 1.0


def test_gold_boxed_compares_against_the_solution_box():
    solution = r"We compute 2+2 and get \boxed{4}."
    assert _score(MathAnswerConfig(gold_boxed=True), r"\boxed{4}", solution).score == 1.0
    assert _score(MathAnswerConfig(gold_boxed=True), r"\boxed{5}", solution).score == 0.0


def test_timeout_scores_wrong_and_is_a_failure(monkeypatch):
    monkeypatch.setattr(math_mod, "math_equal", lambda p, g: time.sleep(5))
    start = time.monotonic()
    res = _score(MathAnswerConfig(timeout_s=0.2, wrong_score=0.0), r"\boxed{1}", "1")
    assert time.monotonic() - start < 2.0
    assert res.failed and res.score == 0.0 and "timed out" in res.reason


def test_bad_options():
    with pytest.raises(ValueError, match="extraction strategy"):
        MathAnswerConfig(extract=["boxed", "nope"])
    with pytest.raises(ValueError, match="timeout_s"):
        MathAnswerConfig(timeout_s=0)
