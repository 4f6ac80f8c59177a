"""User reward functions used by the manager and custom-reward tests (loaded with `custom` by file path)."""

import os
import signal
import time


def const(sample, value=0.5):
    return value


def length(response):
    return float(len(response))


def boom(sample):
    raise RuntimeError(f"boom on {sample.sample_id}")


def sleepy(response):
    """Sleeps `response` seconds when the response looks like 'sleep:<seconds>'."""
    if response.startswith("sleep:"):
        time.sleep(float(response.split(":")[1]))
    return 1.0


def deaf_sleeper(response):
    """Blocks SIGALRM first, so only the pool's outside timeout can stop it."""
    if response.startswith("sleep:"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(float(response.split(":")[1]))
    return 1.0


def crash(response):
    if response == "crash":
        os._exit(3)
    return 1.0


def with_reason(response, answer):
    return {"score": float(response == answer), "reason": "" if response == answer else "mismatch"}


def returns_text(sample):
    return "not a number"


async def coroutine(sample):
    return 1.0


def needs_unknown(sample, threshold):
    return 1.0


def bad_name(text):
    return 1.0


NOT_CALLABLE = 3


# TRL-style batch functions (tests/rewards/test_batch_rewards.py)
CALLS: list[dict] = []


def trl_accuracy(prompts, completions, solution, **kwargs):
    """TRL's accuracy_reward shape: conversational completions, a `solution` column."""
    CALLS.append(dict(prompts=prompts, completions=completions, solution=solution, **kwargs))
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if t.strip() == s else 0.0 for t, s in zip(texts, solution)]


def trl_declared_only(prompts, completions, solution):
    CALLS.append(dict(prompts=prompts, completions=completions, solution=solution))
    return [None if s is None else 0.5 for s in solution]


def trl_needs_missing_column(prompts, completions, difficulty):
    return [0.0] * len(prompts)


def trl_wrong_length(prompts, completions, **kwargs):
    return [1.0]


def trl_with_option(prompts, completions, scale=1.0, **kwargs):
    return [scale * len(c) for c in completions]


def meta_solution(sample):
    """A per-sample reward reading a dataset column from `sample.meta`."""
    return 1.0 if sample.response.strip() == sample.meta["solution"] else 0.0
