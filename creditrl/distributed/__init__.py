"""Scale-out: the same recipes as Ray worker groups (rollout actors, DeepSpeed learner ranks), weight sync,
placement and fault handling. Importing this package does not import Ray or DeepSpeed; see docs/distributed.md.

Entry point: `train_distributed(cfg)` (selected by `resources.backend: ray`).
"""

from __future__ import annotations


def train_distributed(cfg, console=None, **kwargs):
    from creditrl.distributed.controller import train_distributed as _train

    return _train(cfg, console, **kwargs)


__all__ = ["train_distributed"]
