"""Shaping rewards added to a correctness reward with weights in `reward.fns`: format, length, overlong.

`format_tags` — checks the response's tag structure (e.g. `<think>…</think><answer>…</answer>`):
  checks = one per required tag (it appears exactly once as an opening then a closing tag)
           + 1 if `in_order` (the tag blocks appear in the listed order, without overlapping)
           + 1 if `strict` (nothing but whitespace outside the tag blocks, the R1 format)
  score  = 1 if every check passes; else (checks passed / checks) if `partial`, else 0.

`format_regex` — 1 if the response matches `pattern` (`fullmatch` by default, or `search`), else 0. E.g. the
  R1 format `<think>.*?</think>\s*<answer>.*?</answer>`, or `-?[0-9]+` for "only an integer".

`length_penalty` — a linear cost on length beyond a free allowance:
  score = −coef · max(0, |y| − free_len),  |y| in tokens (`RewardSample.response_tokens`) or characters.

`overlong_penalty` — DAPO overlong buffer shaping, algorithms.md §7 (verl `DAPORewardManager`,
`overlong_buffer.{len, penalty_factor}`), with L_max = `max_len`, L_c = `buffer_len`, |y| in tokens:
  score = min( −(|y| − (L_max − L_c)) / L_c · penalty_factor, 0 )
  0 up to |y| = L_max − L_c, falling linearly to −penalty_factor at |y| = L_max. As in verl the formula is not
  clamped below, so |y| > L_max (impossible when L_max is the generation limit) gives less than −penalty_factor.
  Defaults are the DAPO script's (20480, 4096, 1.0); set `max_len` to the run's `rollout.max_new_tokens`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from creditrl.rewards.base import REWARDS, RewardResult, RewardSample


def _response_tokens(sample: RewardSample, reward: str) -> int:
    if sample.response_tokens is None:
        raise ValueError(f"{reward} needs the response length in tokens (RewardSample.response_tokens), "
                         "which the caller did not set")
    return sample.response_tokens


# ------------------------------------------------------------------------------------------------------------
# format_tags
# ------------------------------------------------------------------------------------------------------------
def tag_span(text: str, tag: str) -> tuple[int, int] | None:
    """(start, end) of the single `<tag>…</tag>` block, or None if the tag is missing, repeated or unclosed."""
    opens = [m.start() for m in re.finditer(re.escape(f"<{tag}>"), text)]
    closes = [m.end() for m in re.finditer(re.escape(f"</{tag}>"), text)]
    if len(opens) != 1 or len(closes) != 1 or closes[0] < opens[0]:
        return None
    return opens[0], closes[0]


def format_checks(text: str, tags: list[str], in_order: bool, strict: bool) -> tuple[int, int, list[str]]:
    """(checks passed, checks, names of the failed checks)."""
    spans = {t: tag_span(text, t) for t in tags}
    failed = [f"<{t}> missing, repeated or unclosed" for t, s in spans.items() if s is None]
    found = [spans[t] for t in tags if spans[t] is not None]
    total = len(tags)
    if in_order:
        total += 1
        if any(b[0] < a[1] for a, b in zip(found, found[1:])):
            failed.append("tags out of order or overlapping")
    if strict:
        total += 1
        outside, last = [], 0
        for start, end in sorted(found):
            outside.append(text[last:start])
            last = end
        outside.append(text[last:])
        if len(found) < len(tags) or "".join(outside).strip():
            failed.append("text outside the tags")
    return total - len(failed), total, failed


@dataclass
class FormatTagsConfig:
    tags: list[str] = field(default_factory=lambda: ["think", "answer"])  # names; each <tag>…</tag> exactly once
    in_order: bool = True  # the blocks must appear in the listed order, without overlapping
    strict: bool = False  # no text (other than whitespace) outside the blocks
    partial: bool = False  # fraction of checks passed instead of all-or-nothing

    def __post_init__(self):
        if not self.tags:
            raise ValueError("format_tags needs at least one tag")
        bad = [t for t in self.tags if not re.fullmatch(r"[A-Za-z_][\w\-]*", t)]
        if bad:
            raise ValueError(f"format_tags: invalid tag names {bad} (write think, not <think>)")


@REWARDS.register("format_tags", FormatTagsConfig)
def format_tags(cfg: FormatTagsConfig):
    """1 if the response has the required <tag>…</tag> blocks (in order; optionally nothing else), else 0."""

    def score(sample: RewardSample) -> RewardResult:
        passed, total, failed = format_checks(sample.response, cfg.tags, cfg.in_order, cfg.strict)
        if not failed:
            return RewardResult(1.0)
        return RewardResult(passed / total if cfg.partial else 0.0, "; ".join(failed))

    return score


# ------------------------------------------------------------------------------------------------------------
# format_regex
# ------------------------------------------------------------------------------------------------------------
@dataclass
class FormatRegexConfig:
    pattern: str = ""  # Python regular expression (required); `.` also matches newlines
    mode: Literal["fullmatch", "search"] = "fullmatch"  # the whole response must match, or any part of it
    strip: bool = True  # ignore leading/trailing whitespace of the response

    def __post_init__(self):
        if not self.pattern:
            raise ValueError("format_regex needs a pattern")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"format_regex pattern {self.pattern!r} is not a valid regular expression: {e}") from None


@REWARDS.register("format_regex", FormatRegexConfig)
def format_regex(cfg: FormatRegexConfig):
    """1 if the response matches the regular expression (whole response by default), else 0."""
    regex = re.compile(cfg.pattern, re.DOTALL)
    match = regex.fullmatch if cfg.mode == "fullmatch" else regex.search

    def score(sample: RewardSample) -> RewardResult:
        text = sample.response.strip() if cfg.strip else sample.response
        if match(text):
            return RewardResult(1.0)
        return RewardResult(0.0, "response does not match the format")

    return score


# ------------------------------------------------------------------------------------------------------------
# length_penalty
# ------------------------------------------------------------------------------------------------------------
@dataclass
class LengthPenaltyConfig:
    coef: float = 1e-3  # penalty per unit of length over free_len
    free_len: int = 0  # length (in unit) allowed without penalty, >= 0
    unit: Literal["tokens", "chars"] = "tokens"  # |y| in response tokens or characters

    def __post_init__(self):
        if self.coef < 0 or self.free_len < 0:
            raise ValueError(f"length_penalty: coef and free_len must be >= 0, got {self.coef}, {self.free_len}")


@REWARDS.register("length_penalty", LengthPenaltyConfig)
def length_penalty(cfg: LengthPenaltyConfig):
    """−coef · max(0, |y| − free_len), |y| in tokens or characters."""

    def score(sample: RewardSample) -> float:
        n = _response_tokens(sample, "length_penalty") if cfg.unit == "tokens" else len(sample.response)
        return -cfg.coef * max(0, n - cfg.free_len)

    return score


# ------------------------------------------------------------------------------------------------------------
# overlong_penalty (DAPO)
# ------------------------------------------------------------------------------------------------------------
def overlong_penalty_value(length: int, max_len: int, buffer_len: int, penalty_factor: float) -> float:
    """DAPO: min(−(|y| − (L_max − L_c)) / L_c · penalty_factor, 0)."""
    expected_len = max_len - buffer_len
    return min(-(length - expected_len) / buffer_len * penalty_factor, 0.0)


@dataclass
class OverlongPenaltyConfig:
    max_len: int = 20480  # L_max: the maximum response length (rollout.max_new_tokens)
    buffer_len: int = 4096  # L_c: the penalty ramps over the last buffer_len tokens
    penalty_factor: float = 1.0  # penalty reached at max_len (linear from 0 over the buffer), >= 0

    def __post_init__(self):
        if not 0 < self.buffer_len <= self.max_len:
            raise ValueError(f"overlong_penalty needs 0 < buffer_len <= max_len, got buffer_len="
                             f"{self.buffer_len}, max_len={self.max_len}")
        if self.penalty_factor < 0:
            raise ValueError(f"overlong_penalty penalty_factor must be >= 0, got {self.penalty_factor}")


@REWARDS.register("overlong_penalty", OverlongPenaltyConfig)
def overlong_penalty(cfg: OverlongPenaltyConfig):
    """DAPO overlong buffer shaping: 0 up to max_len − buffer_len tokens, then linear down to −penalty_factor."""

    def score(sample: RewardSample) -> float:
        n = _response_tokens(sample, "overlong_penalty")
        return overlong_penalty_value(n, cfg.max_len, cfg.buffer_len, cfg.penalty_factor)

    return score
