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
