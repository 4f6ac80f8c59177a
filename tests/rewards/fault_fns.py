"""Reward functions that misbehave, for the fault tests (loaded with `custom` by file path)."""

import math


def c_hang(response):
    """Stuck in C code when the response is 'hang': SIGALRM's Python handler never gets to run."""
    if response == "hang":
        return float(sum(range(10**12)))
    return 1.0


def non_finite(response):
    """NaN, +Inf or -Inf by the response; 1.0 otherwise."""
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(response, 1.0)


def nan_result(sample):
    from creditrl.rewards import RewardResult

    return RewardResult(math.nan, reason="nan inside a RewardResult")


def always_nan(sample):
    return math.nan
