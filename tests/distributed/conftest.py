"""Fixtures of the distributed tests: a tiny random model + data (no SFT needed), a local Ray instance."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class TinyFiles:
    model: Path
    train_file: Path
    eval_file: Path

    def overrides(self, run_dir: Path | None = None, *extra: str) -> list[str]:
        out = [f"model.path={self.model}", f"data.train_files=[{self.train_file}]",
               f"data.eval_files=[{self.eval_file}]", "logging.progress=false"]
        if run_dir is not None:
            out.append(f"output_dir={run_dir}")
        return out + list(extra)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> TinyFiles:
    from creditrl.data.synthetic import write_arithmetic_task
    from creditrl.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("dist_tiny")
    model = build_tiny_model(root / "base", seed=0)
    data = write_arithmetic_task(root / "data", seed=0)
    return TinyFiles(Path(model), data / "train.jsonl", data / "eval.jsonl")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("deepspeed")
    from creditrl.distributed.ray_runtime import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray("local", num_cpus=2)
    yield ray
    ray.shutdown()


@contextmanager
def started_groups(cfg, tokenizer):
    """A placement, a LearnerGroup (10 planned steps) and a RolloutGroup for `cfg`; all shut down on exit."""
    from creditrl.distributed.learner_group import LearnerGroup
    from creditrl.distributed.placement import make_placement
    from creditrl.distributed.rollout_group import RolloutGroup

    placement = make_placement(cfg.resources, 120)
    learner = LearnerGroup(cfg, 10, tokenizer.pad_token_id, placement.learner)
    try:
        rollout = RolloutGroup(cfg, placement.rollout, tokenizer.pad_token_id, tokenizer.eos_token_id)
        try:
            yield learner, rollout
        finally:
            rollout.shutdown()
    finally:
        learner.shutdown()
        placement.remove()
