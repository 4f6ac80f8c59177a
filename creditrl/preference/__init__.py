"""Offline preference training: DPO, TDPO1/TDPO2 (token-level, full-vocab KL via the fused op), cDPO.

Pure loss math lives in `creditrl.algorithms.dpo` and `creditrl.algorithms.tdpo`; this package holds the data
(pairs), the per-token forward, the loss glue, the trainer and the held-out evaluation.
"""

from creditrl.preference.data import (
    PreferencePair, arithmetic_pair, load_pairs, pair_batch, pair_micro_batches, write_arithmetic_pairs,
)
from creditrl.preference.losses import LOSSES, pair_loss

__all__ = [
    "LOSSES",
    "PreferencePair",
    "arithmetic_pair",
    "load_pairs",
    "pair_batch",
    "pair_loss",
    "pair_micro_batches",
    "write_arithmetic_pairs",
]
