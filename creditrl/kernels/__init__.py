"""Fused lm_head + per-token statistics (log-prob, entropy, LSE, Lp-Reg proxy, reference KL) with autograd.

    from creditrl.kernels import linear_token_stats, TokenStats
    stats = linear_token_stats(hidden, weight, targets, temperature=1.0, want=("logp", "entropy"))

The [N, V] logits are never held beyond a bounded chunk (chunked torch) or tile (Triton). See
`creditrl/kernels/dispatch.py` for the backends and docs/kernels.md for the design.
"""

from creditrl.kernels.dispatch import kernels_mode, linear_token_stats
from creditrl.kernels.types import LpRegProxy, TokenStats

__all__ = ["LpRegProxy", "TokenStats", "kernels_mode", "linear_token_stats"]
