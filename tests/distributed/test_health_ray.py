"""Training health on the Ray / DeepSpeed path: a diverging ZeRO-3 run (each rank checks its parameter shard,
the ranks all-reduce the maximum) stops with a named error and leaves the good checkpoints untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from creditrl.config import load_config

SHORT = ("train.global_batch_prompts=8", "rollout.n_samples=4", "eval.max_prompts=16", "eval.pass_k=0",
         "resources.call_timeout_s=300", "checkpoint.every_steps=1")


def _snapshot(run: Path) -> dict[str, str]:
    root = run / "checkpoints"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_zero3_divergence_stops_before_any_checkpoint(local_ray, tiny_files, tmp_path):
    from creditrl.learner.health import TrainingDiverged
    from creditrl.trainer.loop import train

    run = tmp_path / "run"
    train(load_config("tiny_grpo_ray_zero3", tiny_files.overrides(run, *SHORT, "train.steps=1")))
    before = _snapshot(run)
    assert "latest" in before and any(k.startswith("step_000001/deepspeed/") for k in before)
    # the random-init model scores 0 everywhere (zero advantages, zero gradients, so Adam moves nothing): the
    # decoupled weight decay is what lr=1e30 blows up, theta <- theta (1 - lr wd)
    with pytest.raises(TrainingDiverged, match="training stopped at step 1: the model diverged") as info:
        train(load_config("tiny_grpo_ray_zero3", tiny_files.overrides(run, *SHORT, "train.steps=2",
                                                                      "train.lr=1e30", "train.weight_decay=0.01")))
    assert info.value.metrics["actor/param_max_abs"] > 1e20
    assert _snapshot(run) == before
