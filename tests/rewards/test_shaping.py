"""Shaping rewards: DAPO overlong penalty (spec vector), length penalty, format tags."""

import pytest

from creditrl.rewards import REWARDS, RewardSample
from creditrl.rewards.shaping import FormatTagsConfig, LengthPenaltyConfig, OverlongPenaltyConfig


def _sample(response: str = "", tokens: int | None = None) -> RewardSample:
    return RewardSample("t/0", "q", response, "a", response_tokens=tokens)


# ---------------------------------------------------------------------------------------------- overlong
@pytest.mark.parametrize("length, expected", [(16000, 0.0), (16384, 0.0), (18432, -0.5), (20480, -1.0)])
def test_overlong_spec_vector(length, expected):
    """algorithms.md §7 test vector: L_max 20480, L_c 4096, factor 1."""
    fn = REWARDS.build("overlong_penalty", OverlongPenaltyConfig(max_len=20480, buffer_len=4096, penalty_factor=1.0))
    assert fn(_sample(tokens=length)) == pytest.approx(expected, abs=1e-12)


def test_overlong_matches_formula_on_a_grid():
    l_max, l_c, factor = 64, 16, 0.5
    fn = REWARDS.build("overlong_penalty", OverlongPenaltyConfig(max_len=l_max, buffer_len=l_c, penalty_factor=factor))
    for n in range(0, 80):
        exceed = n - (l_max - l_c)
        ref = 0.0 if exceed <= 0 else -exceed / l_c * factor  # unclamped below, as in verl
        assert fn(_sample(tokens=n)) == pytest.approx(ref, abs=1e-12), n


def test_overlong_needs_token_length_and_valid_options():
    fn = REWARDS.build("overlong_penalty", OverlongPenaltyConfig(max_len=10, buffer_len=5))
    with pytest.raises(ValueError, match="response_tokens"):
        fn(_sample(tokens=None))
    with pytest.raises(ValueError, match="buffer_len"):
        OverlongPenaltyConfig(max_len=10, buffer_len=11)
    with pytest.raises(ValueError, match="buffer_len"):
        OverlongPenaltyConfig(max_len=10, buffer_len=0)
    with pytest.raises(ValueError, match="penalty_factor"):
        OverlongPenaltyConfig(penalty_factor=-1)


# ---------------------------------------------------------------------------------------------- length
def test_length_penalty_tokens_and_chars():
    tok = REWARDS.build("length_penalty", LengthPenaltyConfig(coef=0.01, free_len=10))
    assert tok(_sample(tokens=5)) == 0.0
    assert tok(_sample(tokens=10)) == 0.0
    assert tok(_sample(tokens=35)) == pytest.approx(-0.25)
    chars = REWARDS.build("length_penalty", LengthPenaltyConfig(coef=0.5, free_len=2, unit="chars"))
    assert chars(_sample("abcdef")) == pytest.approx(-2.0)
    assert chars(_sample("")) == 0.0
    with pytest.raises(ValueError):
        LengthPenaltyConfig(coef=-1)


# ---------------------------------------------------------------------------------------------- format
def _fmt(response: str, **kw):
    return REWARDS.build("format_tags", FormatTagsConfig(**kw))(_sample(response))


@pytest.mark.parametrize("response, kw, score", [
    ("<think>hmm</think><answer>4</answer>", {}, 1.0),
    ("<think>hmm</think> then <answer>4</answer>", {}, 1.0),  # text between tags is fine unless strict
    ("<think>hmm</think> then <answer>4</answer>", {"strict": True}, 0.0),
    ("  <think>hmm</think>\n<answer>4</answer>\n", {"strict": True}, 1.0),  # whitespace only
    ("<answer>4</answer><think>hmm</think>", {}, 0.0),  # out of order
    ("<answer>4</answer><think>hmm</think>", {"in_order": False}, 1.0),
    ("<think>hmm</think>", {}, 0.0),  # missing <answer>
    ("<think>a</think><think>b</think><answer>4</answer>", {}, 0.0),  # repeated
    ("<think>hmm<answer>4</answer>", {}, 0.0),  # unclosed
    ("</think>hmm<think><answer>4</answer>", {}, 0.0),  # closed before opened
    ("<think><answer>4</answer></think>", {}, 0.0),  # overlapping blocks
    ("", {}, 0.0),
])
def test_format_tags_all_or_nothing(response, kw, score):
    assert _fmt(response, **kw).score == score


def test_format_tags_partial_credit_counts_checks():
    # tags think, answer + order check = 3 checks; <answer> missing -> 2 of 3 pass (order holds trivially)
    assert _fmt("<think>x</think>", partial=True).score == pytest.approx(2 / 3)
    # + strict check = 4 checks; only <think> ok and order ok -> 2 of 4
    res = _fmt("<think>x</think> junk", partial=True, strict=True)
    assert res.score == pytest.approx(2 / 4)
    assert "<answer> missing" in res.reason and "outside" in res.reason
    assert _fmt("<think>x</think><answer>1</answer>", partial=True).score == 1.0


def test_format_tags_rejects_bad_tag_names():
    with pytest.raises(ValueError, match="invalid tag"):
        FormatTagsConfig(tags=["<think>"])
    with pytest.raises(ValueError):
        FormatTagsConfig(tags=[])


# ---------------------------------------------------------------------------------------------- format_regex
def test_format_regex_fullmatch_search_and_strip():
    from creditrl.rewards.shaping import FormatRegexConfig

    integer = REWARDS.build("format_regex", FormatRegexConfig(pattern=r"-?[0-9]+"))
    assert integer(_sample("72")).score == 1.0
    assert integer(_sample("  -5\n")).score == 1.0  # stripped
    assert integer(_sample("72 apples")).score == 0.0
    unstripped = REWARDS.build("format_regex", FormatRegexConfig(pattern=r"-?[0-9]+", strip=False))
    assert unstripped(_sample(" 72")).score == 0.0
    r1 = REWARDS.build("format_regex", FormatRegexConfig(pattern=r"<think>.*?</think>\s*<answer>.*?</answer>"))
    assert r1(_sample("<think>a\nb</think>\n<answer>4</answer>")).score == 1.0  # . matches newlines
    found = REWARDS.build("format_regex", FormatRegexConfig(pattern=r"\\boxed\{", mode="search"))
    assert found(_sample(r"so \boxed{4}")).score == 1.0
    with pytest.raises(ValueError, match="not a valid regular expression"):
        FormatRegexConfig(pattern="(")
    with pytest.raises(ValueError, match="needs a pattern"):
        FormatRegexConfig()
