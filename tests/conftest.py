"""Shared fixtures. `tiny_task` builds the tiny model, the synthetic data and a short SFT warm start once per
test session (about 30-60 s on 2 cores), the same way `make demo` does, through the framework's own code."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _triton_interpreter_first() -> None:
    """Without a GPU, Triton kernels run in its CPU interpreter, which is chosen when a function is decorated:
    for triton's own `triton.language` helpers too. Set it and import triton here, before any test module
    (or a library a test imports) can import triton with the interpreter off; a later test that sets
    TRITON_INTERPRET=0 (test_dispatch) then cannot leave half of triton interpreted and half compiled."""
    import importlib.util

    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton.language  # noqa: F401

    import creditrl.kernels.triton_kernels  # noqa: F401


_triton_interpreter_first()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@dataclass
class TinyTask:
    root: Path
    base: Path  # random-init model + tokenizer
    sft: Path  # warm-started model
    train_file: Path
    eval_file: Path
    small_train_file: Path  # 64 rows: an epoch ends every 2 steps at 32 prompts per step

    def overrides(self, run_dir: Path, *extra: str) -> list[str]:
        """Overrides pointing the built-in tiny recipes at this session's files."""
        return [
            f"model.path={self.sft}",
            f"data.train_files=[{self.train_file}]",
            f"data.eval_files=[{self.eval_file}]",
            f"output_dir={run_dir}",
            "logging.progress=false",
            *extra,
        ]


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> TinyTask:
    from creditrl.config import load_config
    from creditrl.data.synthetic import write_arithmetic_task
    from creditrl.models.tiny import build_tiny_model
    from creditrl.trainer.sft import run_sft

    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base", seed=0)
    data = write_arithmetic_task(root / "data", seed=0)
    small = root / "data" / "small_train.jsonl"
    small.write_text("".join((data / "train.jsonl").read_text().splitlines(keepends=True)[:64]))
    cfg = load_config("tiny_grpo", [
        f"sft.init_path={base}", f"sft.output_path={root / 'sft'}", f"data.train_files=[{data / 'train.jsonl'}]",
        f"data.eval_files=[{data / 'eval.jsonl'}]", "logging.progress=false", "eval.pass_k=0",
    ])
    metrics = run_sft(cfg)
    assert metrics["eval/greedy_acc"] > 0.3, f"warm start failed to learn the task: {metrics}"
    return TinyTask(root, base, root / "sft", data / "train.jsonl", data / "eval.jsonl", small)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
