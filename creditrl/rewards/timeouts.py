"""Per-call time limits for reward functions that run in the calling process.

    with deadline(5.0):
        slow_sympy_call()  # raises RewardTimeout after 5 s

The limit uses SIGALRM (`setitimer`), so it works only in the main thread of a process: the worker processes
of the serial and process executors and the Ray actors all call rewards there. Elsewhere `deadline` is a no-op.
SIGALRM's Python handler runs only between bytecodes, so code stuck in C (`sum(range(10**12))`) is not
interrupted by it: the executors' outside timeout (kill the worker, executor.py) is the limit that always holds. `RewardTimeout` derives from BaseException so that
libraries which catch `Exception` (math-verify, sympy) can not swallow it. Deadlines nest: an inner deadline
never extends an outer one, and the outer one is re-armed when the inner one ends.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class RewardTimeout(BaseException):
    """A reward call ran past its deadline."""


def _raise_timeout(signum, frame) -> None:
    raise RewardTimeout()


def can_interrupt() -> bool:
    """True where `deadline` is enforced (the main thread of a Unix process)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise `RewardTimeout` in this block after `seconds` (None or <= 0: no limit)."""
    if seconds is None or seconds <= 0 or not can_interrupt():
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    start = time.monotonic()
    limit = min(seconds, outer_left) if outer_left > 0 else seconds
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if outer_left > 0:  # re-arm the enclosing deadline with what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3))
