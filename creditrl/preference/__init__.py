"""Offline preference data: DPO, TDPO1/TDPO2 (token-level, full-vocab KL via the fused op), cDPO.

`creditrl train` runs a recipe with a `preference:` section through the one step loop (`creditrl/trainer/loop.py`,
the preference side in `creditrl/trainer/preference.py`) on either backend. This package holds what is specific
to the data: loading pairs (`data.py`), the tiny task's pairs (`make_pairs.py`) and the results table
(`report.py`). The learner step is `creditrl/learner/preference.py` (pair forward: `learner/pair_stats.py`,
batches: `learner/pairs.py`); the pure losses are `creditrl/algorithms/{dpo,tdpo,pair_loss}.py`.
"""

from creditrl.preference.data import PreferencePair, arithmetic_pair, load_pairs, write_arithmetic_pairs

__all__ = [
    "PreferencePair",
    "arithmetic_pair",
    "load_pairs",
    "write_arithmetic_pairs",
]
