"""Whether forward passes run under bf16 autocast (`model.autocast_bf16`), resolved once per model directory.

`null` (the default) turns it on only where it is both supported and faster, by measurement on this project's
bench machine (docs/benchmarks.md, "bf16 autocast"): the CPU must multiply bf16 natively (AMX tiles or
AVX512-BF16; elsewhere PyTorch emulates bf16 matmuls, slower than fp32), and the model must be wide enough that
the matmuls outweigh autocast's casts. bf16 time / fp32 time, one thread (`bench/bf16_autocast.py`: forward +
backward of a 2-layer Llama, 16 x 64 tokens; `bench/speed_knobs.py`: the default recipe's update step):

    hidden 128: 0.84-1.52 (bench/bf16_autocast.py, varies run to run), 1.45 in the default recipe's update
    hidden 256: 0.61-0.71    512: 0.55-0.60    896: 0.40

so the threshold is a hidden size of 256. `true` / `false` force it either way. On a GPU learner the CPU autocast
is a no-op (its tensors are CUDA tensors); GPU precision is `model.dtype` and `resources.bf16`.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from creditrl.config.schema import ModelConfig
from creditrl.kernels.chunked import cpu_fast_bf16

log = logging.getLogger(__name__)

MIN_HIDDEN_FOR_BF16 = 256  # measured crossover (module docstring)


def model_hidden_size(path: str) -> int | None:
    """`hidden_size` (or `n_embd` / `d_model`) of the config.json in a model directory; None if unreadable."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


@functools.lru_cache(maxsize=None)
def _auto(path: str) -> bool:
    hidden = model_hidden_size(path)
    native = cpu_fast_bf16()
    on = native and hidden is not None and hidden >= MIN_HIDDEN_FOR_BF16
    log.info("model.autocast_bf16 auto -> %s (native bf16 matmul: %s, hidden size: %s, threshold %d)",
             on, native, hidden, MIN_HIDDEN_FOR_BF16)
    return on


def use_bf16_autocast(model_cfg: ModelConfig) -> bool:
    """`model.autocast_bf16` as a bool: the setting, or for null the automatic choice (module docstring)."""
    if model_cfg.autocast_bf16 is not None:
        return model_cfg.autocast_bf16
    return _auto(model_cfg.path)  # cached by the path as written: called on every forward, so no filesystem lookup
