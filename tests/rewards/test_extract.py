"""Answer extraction: each strategy alone, the default order, and decoration stripping."""

import pytest

from creditrl.rewards.extract import (
    after_hashes,
    after_marker,
    check_strategies,
    extract_answer,
    last_boxed,
    last_number,
)


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{42}.", "42"),
    (r"first \boxed{1} then \boxed{2}", "2"),  # the last one
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
    (r"\boxed{\left\{ 1, \sqrt{2} \right\}}", r"\left\{ 1, \sqrt{2} \right\}"),  # deep nesting
    (r"\fbox{7}", "7"),
    (r"\boxed {x+1}", "x+1"),
    (r"\boxed{3} and an unclosed \boxed{4", "3"),  # an unclosed box is skipped
    (r"\boxed{}", None),  # empty
    ("no box here 5", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", "42"),
    ("The answer is 3.5. Then more text", "3.5"),  # up to the end of the sentence
    ("Final answer: $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("the final answer is: **17**", "17"),
    ("Answer: x = 5 cm\nmore text", "x = 5 cm"),  # only the rest of that line
    ("answer is 1. Wait, no. The answer is 2.", "2"),  # the last marker
    ("Q: 2+2? A: 4", "4"),
    ("The answer is \\(\\sqrt{2}\\).", "\\sqrt{2}"),
    ("I have no marker 12", None),
    ("The answer is", None),  # a marker with nothing after it
])
def test_after_marker(text, expected):
    assert after_marker(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48 clips ... #### 72", "72"),
    ("#### 1,234\n", "1,234"),
    ("no hashes 3", None),
])
def test_after_hashes(text, expected):
    assert after_hashes(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("3 apples and 5 pears", "5"),
    ("total: -12.5", "-12.5"),
    ("it is 1,234,567 in all", "1,234,567"),
    ("ratio 7/2", "7/2"),
    ("about .5", ".5"),
    ("no digits", None),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_strategy_order_and_fallback():
    text = r"The answer is 3. Actually \boxed{4}. Finally 5"
    assert extract_answer(text) == ("4", "boxed")
    assert extract_answer(text, ["answer_is", "boxed"]) == ("3", "answer_is")
    assert extract_answer("so it is 9", ["boxed", "answer_is", "last_number"]) == ("9", "last_number")
    assert extract_answer("so it is 9", ["boxed", "answer_is"]) is None
    assert extract_answer("") is None


def test_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match="unknown answer extraction strategy"):
        check_strategies(["boxed", "last_word"])
    with pytest.raises(ValueError):
        check_strategies([])
