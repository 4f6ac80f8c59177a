"""The learning-rate schedule (creditrl/models/schedule.py) against a hand-computed table, and against
transformers' schedulers after the warm-up (the module docstring says why it is not replaced by them)."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.models.schedule import lr_factor

# (step, total, warmup, kind, min_ratio) -> factor, computed by hand
TABLE = [
    (0, 10, 4, "constant", 0.0, 0.25), (1, 10, 4, "constant", 0.0, 0.5), (3, 10, 4, "constant", 0.0, 1.0),
    (9, 10, 4, "constant", 0.0, 1.0), (0, 10, 0, "constant", 0.0, 1.0),
    (0, 10, 0, "linear", 0.0, 1.0), (5, 10, 0, "linear", 0.0, 0.5), (10, 10, 0, "linear", 0.0, 0.0),
    (5, 10, 0, "linear", 0.1, 0.55), (12, 10, 0, "linear", 0.1, 0.1), (2, 10, 2, "linear", 0.0, 1.0),
    (6, 10, 2, "linear", 0.0, 0.5),
    (0, 10, 0, "cosine", 0.0, 1.0), (5, 10, 0, "cosine", 0.0, 0.5), (10, 10, 0, "cosine", 0.0, 0.0),
    (5, 10, 0, "cosine", 0.1, 0.55), (15, 10, 0, "cosine", 0.1, 0.1), (0, 10, 2, "cosine", 0.1, 0.5),
    (6, 10, 2, "cosine", 0.2, 0.6), (4, 10, 2, "cosine", 0.0, 0.5 * (1 + math.cos(math.pi / 4))),
]


@pytest.mark.parametrize("step, total, warmup, kind, min_ratio, want", TABLE)
def test_factor_table(step, total, warmup, kind, min_ratio, want):
    assert lr_factor(step, total, warmup, kind, min_ratio) == pytest.approx(want, abs=1e-12)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(5, 10, 0, "exp", 0.0)


def _hf_factors(kind: str, total: int, warmup: int, min_ratio: float) -> list[float]:
    from transformers import (get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup,
                              get_polynomial_decay_schedule_with_warmup)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    if kind == "constant":
        sched = get_constant_schedule_with_warmup(opt, warmup)
    elif kind == "linear":
        sched = get_polynomial_decay_schedule_with_warmup(opt, warmup, total, lr_end=2.0 * min_ratio, power=1.0)
    else:
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=min_ratio)
    return [sched.lr_lambdas[0](s) for s in range(total + 1)]


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_matches_transformers_after_warmup_and_is_one_step_ahead_during_it(kind):
    total, warmup, min_ratio = 20, 5, 0.1
    hf = _hf_factors(kind, total, warmup, min_ratio)
    ours = [lr_factor(s, total, warmup, kind, min_ratio) for s in range(total + 1)]
    for s in range(warmup, total + 1):
        assert ours[s] == pytest.approx(hf[s], abs=1e-12), s
    for s in range(warmup):  # the one named difference: transformers' warm-up starts at 0
        assert ours[s] == pytest.approx(hf[s + 1] if s + 1 < warmup else 1.0, abs=1e-12)
        assert hf[s] == pytest.approx(s / warmup)
    assert hf[0] == 0.0 and ours[0] == 1 / warmup
