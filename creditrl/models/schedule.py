"""Learning-rate schedule: linear warm-up, then constant, linear or cosine decay to `min_lr_ratio * lr`.

Why not transformers' schedulers (`get_constant_schedule_with_warmup`, `get_polynomial_decay_schedule_with_warmup`
with power 1, `get_cosine_with_min_lr_schedule_with_warmup`)? After the warm-up they give the same factors as
`lr_factor` (tests/trainer/test_schedule.py checks this step by step), but their warm-up factor at optimizer step
`s < warmup` is `s / warmup`, ours is `(s + 1) / warmup`: theirs is 0 at step 0, so the first optimizer step of
every run with a warm-up would update nothing (an RL step's rollouts spent for no change of the weights, while
AdamW's moments still take its gradient), every factor of the warm-up would move one step later, and a run resumed
from a checkpoint taken before this change would continue on a different schedule than it started. Two smaller
differences: their cosine rises again past `total` (ours stays at the minimum), and their linear decay divides by
zero when `total == warmup`. So the schedule stays hand-written (a LambdaLR over `lr_factor`, in
creditrl/models/build.py: the local learner and the DeepSpeed learners; creditrl/trainer/sft.py for the warm start;
checkpoints hold only LambdaLR's step count, not the function).
"""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if kind == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule '{kind}'")
