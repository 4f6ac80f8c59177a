"""The countdown reward: an exact, eval-free check of the scratchpad (creditrl/rewards/countdown.py)."""

from __future__ import annotations

import pytest

from creditrl.rewards import REWARDS, RewardSample
from creditrl.rewards.countdown import CountdownConfig, check_solution

NUMS, TARGET = [3, 7, 12, 15], 41


@pytest.mark.parametrize("response, ok, reason", [
    ("15+12=27;27+7=34;34+3=37", False, "ends at 37"),  # legal, wrong value
    ("12*3=36;36+15=51;51-7=44", False, "ends at 44"),
    ("15*3=45;45-7=38;38+3=41", False, "uses 3"),  # 3 reused
    ("15*3=45;45-12=33;33+7=40", False, "ends at 40"),
    ("7*3=21;21+15=36;36+12=48", False, "ends at 48"),
    ("12+15=27;27+7=34;34+7=41", False, "uses 7"),  # reused
    ("7*3=21;21+12=33;33+15=48", False, "ends at 48"),
    ("15*3=45;45-12=33;33+8=41", False, "uses 8"),  # 8 not given
    ("7*3=21;21+15=36;36+5=41", False, "uses 5"),
    ("7*3=22;22+15=37", False, "wrong arithmetic"),
    ("15/0=0", False, "not available"),  # 0 is not given
    ("hello world", False, "malformed"),
    ("", False, "empty"),
    ("__import__('os').system('true')", False, "malformed"),
    ("15-12=3;3*7=21;21+3=24", False, "ends at 24"),  # the result 3 and the given 3 are two numbers
    ("12-7=5;15/5=3;3*3=9", False, "ends at 9"),
    ("3-7=-4", False, "negative"),
    ("15/7=2", False, "inexact"),
    ("15+7=22;22+12=34;34+3=37", False, "ends at 37"),
    ("12/3=4;4*7=28;28+15=43", False, "ends at 43"),
    ("15-7=8;8*3=24;24+12=36", False, "ends at 36"),
    ("7*3=21;21+12=33", False, "ends at 33"),
    ("12+15=27;27+7=34;34+3=37;", False, "ends at 37"),
    ("7-3=4;4*12=48;48-15=33", False, "ends at 33"),
    ("3*12=36;36+7=43", False, "ends at 43"),
    ("12*3=36;36-7=29;29+15=44", False, "ends at 44"),
    ("15*3=45;45-7=38", False, "ends at 38"),
    ("15+12=27;27-7=20;20+3=23", False, "ends at 23"),
    ("12+7=19;19+15=34;34+3=37", False, "ends at 37"),
])
def test_wrong_responses(response, ok, reason):
    got, why = check_solution(response, NUMS, TARGET)
    assert got is ok and reason in why


def test_garbage_tail_and_near_misses_are_wrong():
    assert not check_solution("15-12=3;3*7=21;21*...", NUMS, 42)[0]
    assert not check_solution("15-12=3;3*7=21;21+", NUMS, 24)[0]  # truncated last step
    assert not check_solution("15-12=3;3*7=21;21+3=24 and more", NUMS, 24)[0]


CORRECT = [
    ([2, 3, 4], 20, "3+2=5;5*4=20"),
    ([2, 3, 4], 20, " 2 + 3 = 5 ; 5 * 4 = 20 ."),  # spaces and a trailing dot
    ([5, 5, 2], 50, "5*5=25;25*2=50"),  # a number given twice may be used twice
    ([8, 2, 9], 36, "8/2=4;9*4=36"),  # exact division
    ([6, 7, 1, 9], 42, "6*7=42"),  # a subset of the numbers
    ([6, 7, 1, 9], 42, "9-1=8;6*7=42"),  # an unused step is allowed (at most once, not exactly once)
]


@pytest.mark.parametrize("nums, target, response", CORRECT)
def test_correct_responses(nums, target, response):
    assert check_solution(response, nums, target) == (True, "")


def test_division_by_zero_is_a_wrong_answer_not_an_error():
    got, why = check_solution("3-3=0;7/0=0", [3, 3, 7], 0)
    assert not got and "divides by zero" in why


def _score(response, meta=None, prompt="2,3,4 to 20:", answer="20"):
    fn = REWARDS.build("countdown", CountdownConfig())
    return fn(RewardSample("s0", prompt, response, answer, meta=meta or {}))


def test_reward_reads_the_row_or_the_prompt():
    assert _score("3+2=5;5*4=20", {"nums": [2, 3, 4], "target": 20}).score == 1.0
    assert _score("3+2=5;5*4=20").score == 1.0  # parsed from the prompt
    assert _score("3+2=5;5*4=20", {"nums": [2, 3, 5], "target": 20}).score == 0.0  # the row wins
    bad = _score("5*4=20")  # 5 is not given
    assert bad.score == 0.0 and "not available" in bad.reason
    assert _score("3+2=5", prompt="no numbers here").reason.startswith("no numbers")


def test_format_score_only_for_legal_wrong_values():
    fn = REWARDS.build("countdown", CountdownConfig(format_score=0.1))
    sample = lambda r: RewardSample("s", "2,3,4 to 20:", r, "20")  # noqa: E731
    assert fn(sample("3+2=5;5+4=9")).score == 0.1
    assert fn(sample("3+2=6")).score == 0.0
    assert fn(sample("3+2=5;5*4=20")).score == 1.0
