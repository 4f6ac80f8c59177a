"""deadline(): SIGALRM-based limits, nesting, no-op outside the main thread."""

import threading
import time

import pytest

from creditrl.rewards.timeouts import RewardTimeout, deadline


def test_deadline_interrupts_and_is_not_an_exception():
    start = time.monotonic()
    with pytest.raises(RewardTimeout):
        with deadline(0.1):
            try:
                time.sleep(5)
            except Exception:  # a library's `except Exception` must not swallow it
                pytest.fail("RewardTimeout was caught as an Exception")
    assert time.monotonic() - start < 1


def test_no_limit_and_fast_blocks():
    with deadline(None):
        pass
    with deadline(1.0):
        x = sum(range(100))
    assert x == 4950
    time.sleep(1.1)  # the alarm was cancelled: nothing fires later


def test_inner_deadline_never_extends_outer_and_outer_is_rearmed():
    start = time.monotonic()
    with pytest.raises(RewardTimeout):
        with deadline(0.3):
            with deadline(10):  # capped by the outer 0.3 s
                time.sleep(5)
    assert time.monotonic() - start < 1
    start = time.monotonic()
    with pytest.raises(RewardTimeout):
        with deadline(0.4):
            with deadline(0.1):
                pass  # inner ends early; the outer must still fire
            time.sleep(5)
    assert time.monotonic() - start < 1


def test_no_op_outside_the_main_thread():
    done = []

    def work():
        with deadline(0.05):
            time.sleep(0.2)
        done.append(True)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert done == [True]
