"""Input builders and an explicit per-row float64 reference for the kernel tests.

`explicit_row_stats` is written directly from the definitions with Python floats (no torch softmax), so it is
independent of every backend, including `naive`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ALL_WANT = ("logp", "entropy", "lse", "sum_p2", "sum_p2_z", "max_logit", "argmax", "ref_kl")
DIFF_FLOAT_OUTPUTS = ("logp", "entropy", "lse", "sum_p2", "sum_p2_z", "proxy_log_mass", "proxy_kl", "ref_kl")


def make_inputs(n: int, h: int, v: int, *, seed: int = 0, dtype=torch.float64, scale: float = 1.0,
                ref: bool = False, ignore: tuple[int, ...] = ()) -> dict:
    """hidden [n, h], weight [v, h] (both requiring grad), targets [n] with `ignore` rows set to -100."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    for i in ignore:
        targets[i] = -100
    out = {"hidden": hidden, "weight": weight, "targets": targets}
    if ref:
        out["ref"] = (torch.randn(n, h + 1, generator=g, dtype=torch.float64).to(dtype) * scale,
                      torch.randn(v, h + 1, generator=g, dtype=torch.float64).to(dtype))
    return out


def random_upstream(stats, names, n: int, seed: int = 1) -> Tensor:
    """A scalar sum_k <g_k, stats.k> with random per-token g_k, so every output's gradient path is exercised."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for name in names:
        value = getattr(stats, name)
        if value is None:
            continue
        coef = torch.randn(n, generator=g, dtype=torch.float64).to(device=value.device, dtype=value.dtype)
        total = total + (value * coef).sum()
    if getattr(stats, "proxy_logp", None) is not None and stats.proxy_logp.requires_grad:
        pl = stats.proxy_logp
        total = total + 0.7 * torch.where(torch.isfinite(pl), pl, torch.zeros_like(pl)).sum()
    return total


def explicit_row_stats(logits: list[float], target: int) -> dict[str, float]:
    """logp, entropy, lse, sum_p2, sum_p2_z of one row of (already temperature-scaled) logits, from definitions."""
    mx = max(logits)
    total = sum(math.exp(z - mx) for z in logits)
    lse = mx + math.log(total)
    probs = [math.exp(z - lse) for z in logits]
    return {
        "logp": logits[target] - lse,
        "entropy": -sum(p * math.log(p) for p in probs if p > 0),
        "lse": lse,
        "sum_p2": sum(p * p for p in probs),
        "sum_p2_z": sum(p * p * z for p, z in zip(probs, logits)),
    }


def rel_err(a: Tensor, b: Tensor) -> float:
    """Relative Frobenius error ||a - b|| / ||b||."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
