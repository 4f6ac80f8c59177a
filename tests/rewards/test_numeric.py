"""numeric_answer: tolerant number parsing and the extraction order it has always used."""

import pytest

from creditrl.rewards import REWARDS, RewardSample
from creditrl.rewards.numeric import NumericAnswerConfig, extract_answer, parse_number


@pytest.mark.parametrize("text, value", [
    ("1,234", 1234.0), ("+5", 5.0), ("-3.5", -3.5), ("3.50", 3.5), ("7/2", 3.5), ("-0", 0.0), ("$12$", 12.0),
    ("1/0", None), ("abc", None), ("", None), ("1.2.3", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("response, answer", [
    ("72", "72"),  # the tiny arithmetic task: just the number
    ("47+25=72", "72"),
    ("I get 5 and then the answer is 72 because", "72"),  # first number after the marker
    (r"\boxed{72} although 3", "72"),
    ("Q: 47+25? A: 72", "72"),
])
def test_extraction(response, answer):
    assert extract_answer(response) == answer


@pytest.mark.parametrize("response, answer, score", [
    ("72", "72", 1.0), ("72.0", "72", 1.0), ("1,000", "1000", 1.0), ("7/2", "3.5", 1.0),
    ("71", "72", 0.0), ("-72", "72", 0.0), (r"\boxed{\frac{1}{2}}", "0.5", 1.0), ("no digits", "1", 0.0),
])
def test_scores(response, answer, score):
    fn = REWARDS.build("numeric_answer", NumericAnswerConfig())
    assert fn(RewardSample("t/0", "q", response, answer)).score == score


def test_tolerance():
    loose = REWARDS.build("numeric_answer", NumericAnswerConfig(rel_tol=1e-2))
    strict = REWARDS.build("numeric_answer", NumericAnswerConfig())
    sample = RewardSample("t/0", "q", "3.14", "3.1416")
    assert loose(sample).score == 1.0 and strict(sample).score == 0.0
