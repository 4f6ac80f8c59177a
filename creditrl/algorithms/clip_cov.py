"""Clip-Cov: detach a few random high-covariance tokens from the PPO loss (arXiv 2505.22617, section 5).

    r = exp(l - l_old)                          (unclamped, as in the reference)
    L1 = -A r,  L2 = -A clamp(r, 1 - eps_low, 1 + eps_high)
    cov_t = (A_t - mean A)(l_t - mean l)        over the valid tokens of the scope (see covariance.py)
    candidates: valid, not already PPO-clipped (L2 > L1), lb < cov_t < ub
    pick k = max(1, floor(ratio * N_valid)) candidates uniformly at random; corr = 0 there, 1 elsewhere
    L = max(L1, L2) * corr                      (no dual clip)

Reference: verl 0.9.1 `compute_policy_loss_clip_cov` (algorithms.md section 2.8), originally
`PRIME-RL/Entropy-Mechanism-of-RL`. verl draws with the global torch RNG (`torch.randperm`); here the draw uses
a generator per data-parallel rank, advanced on every call, so runs are reproducible (section 17.2); with the
same generator state the selection equals verl's (same candidate order, same randperm). Rank r's stream starts
from `stream_seed(seed, r)` (rank 0: `seed` itself, so the single-process learner and rank 0 start alike) and
its state is part of `state_dict` (checkpointed by the loop, carried back from the DeepSpeed ranks after each
update), so the stream continues across steps on every backend and after a resume.
Defaults are verl's (eps 0.2 / 0.2, ratio 2e-4, lb 1, ub 5); the original scripts use eps_low = eps_high = 1.

token_stat_scope: `micro_batch` (default) is the reference: means, N_valid and the k-subset are per micro-batch.
With `mini_batch` / `global`, `prepare` takes the means, k = max(1, floor(ratio * N_scope)) and the number C of
candidates over the whole scope, and each micro-batch candidate is then detached independently with probability
min(1, k / C): every candidate has the same chance as under a uniform k-subset of the scope, but the count is k
only in expectation (an exact k-subset would need the micro-batches to coordinate).
Metrics: `pg_clipfrac` = PPO-clipped tokens; `clip_cov/selected_frac` = tokens detached by Clip-Cov (verl logs
this one as `pg_clipfrac`); `clip_cov/candidate_frac`; `ppo_kl`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.covariance import CovMeans, covariance_means, token_covariance
from creditrl.algorithms.registry import POLICY_LOSSES
from creditrl.algorithms.token_scope import AllReduce, ScopedPart, ScopedStats, local_all_reduce, scope_count


@dataclass(frozen=True)
class ClipCovScopeStats:
    """Scope statistics for `token_stat_scope` mini_batch / global."""

    means: CovMeans
    select_prob: float  # min(1, k / number of candidates in the scope)


def _ppo_terms(logprobs, old_logprobs, advantages, clip_low, clip_high) -> tuple[Tensor, Tensor, Tensor]:
    delta = logprobs - old_logprobs
    ratio = torch.exp(delta)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return delta, loss1, loss2


def _candidates(cov: Tensor, ppo_clipped: Tensor, mask: Tensor, lb: float, ub: float) -> Tensor:
    return (mask > 0) & ~ppo_clipped & (cov > lb) & (cov < ub)


def clip_cov_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
    scope_stats: ClipCovScopeStats | None = None,
) -> tuple[Tensor, Metrics]:
    """Per-token Clip-Cov loss [B, T] and its metrics. All inputs [B, T].

    `scope_stats` None: micro-batch statistics and an exact k-subset (reference). Else: the scope's means and a
    per-candidate draw with probability `scope_stats.select_prob`.
    """
    delta, loss1, loss2 = _ppo_terms(logprobs, old_logprobs, advantages, clip_low, clip_high)
    ppo_clipped = (loss2 > loss1) & (mask > 0)
    means = scope_stats.means if scope_stats is not None else None
    cov = token_covariance(logprobs, advantages, mask, means)
    candidates = _candidates(cov, ppo_clipped, mask, clip_cov_lb, clip_cov_ub)
    if scope_stats is None:
        idx = torch.nonzero(candidates)  # [n_candidates, 2], row-major order (as verl)
        k = max(int(clip_cov_ratio * float(mask.sum())), 1)
        chosen = idx[torch.randperm(len(idx), generator=generator)[:k]]
        selected = torch.zeros_like(candidates)
        selected[chosen[:, 0], chosen[:, 1]] = True
    else:
        draw = torch.rand(candidates.shape, generator=generator).to(candidates.device)
        selected = candidates & (draw < scope_stats.select_prob)
    corr = (~selected).to(loss1.dtype)
    metrics: Metrics = {
        "pg_clipfrac": masked_mean(ppo_clipped.float(), mask).detach(),
        "clip_cov/selected_frac": masked_mean(selected.float(), mask).detach(),
        "clip_cov/candidate_frac": masked_mean(candidates.float(), mask).detach(),
        "ppo_kl": masked_mean(-delta, mask).detach(),
    }
    return torch.maximum(loss1, loss2) * corr * mask, metrics


@torch.no_grad()
def clip_cov_scope_stats(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    clip_cov_ratio: float,
    clip_cov_lb: float,
    clip_cov_ub: float,
    all_reduce: AllReduce = local_all_reduce,
) -> ClipCovScopeStats:
    """Means, k and the candidate count of the whole scope (all ranks) -> the per-candidate selection chance."""
    means = covariance_means(logprobs, advantages, mask, all_reduce)
    _, loss1, loss2 = _ppo_terms(logprobs, old_logprobs, advantages, clip_low, clip_high)
    cov = token_covariance(logprobs, advantages, mask, means)
    candidates = _candidates(cov, (loss2 > loss1) & (mask > 0), mask, clip_cov_lb, clip_cov_ub)
    n_candidates = scope_count(candidates, all_reduce)
    k = max(int(clip_cov_ratio * means.n_valid), 1)
    return ClipCovScopeStats(means, min(1.0, k / n_candidates) if n_candidates else 0.0)


@dataclass
class ClipCovConfig:
    clip_low: float = 0.2  # eps_low: ratio clipped below at 1 - clip_low, >= 0
    clip_high: float = 0.2  # eps_high: ratio clipped above at 1 + clip_high, >= 0
    clip_cov_ratio: float = 2e-4  # fraction of valid tokens to detach
    clip_cov_lb: float = 1.0  # candidates have token covariance cov_t > lb (exclusive)
    clip_cov_ub: float = 5.0  # ... and cov_t < ub (exclusive); must be > clip_cov_lb
    seed: int = 0  # of the generator that picks the detached tokens

    def __post_init__(self):
        if not 0 < self.clip_cov_ratio <= 1:
            raise ValueError(f"clip_cov.clip_cov_ratio must be in (0, 1] (got {self.clip_cov_ratio})")
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(
                f"clip_cov.clip_cov_lb must be < clip_cov_ub (got {self.clip_cov_lb} >= {self.clip_cov_ub})"
            )
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(f"clip_cov.clip_low/clip_high must be >= 0 (got {self.clip_low}, {self.clip_high})")


def stream_seed(seed: int, rank: int) -> int:
    """Seed of data-parallel rank `rank`'s selection stream: `seed` on rank 0, distinct per rank."""
    return seed if rank == 0 else (seed + rank * 0x9E3779B97F4A7C15) % 2**63


@POLICY_LOSSES.register("clip_cov", ClipCovConfig)
class ClipCov(ScopedPart):
    """Clip-Cov: PPO clip loss with a few random high-covariance tokens detached (seeded, one stream per rank)."""

    needs = frozenset()

    def __init__(self, cfg: ClipCovConfig):
        self.cfg = cfg
        self.rank = 0
        self.generator = torch.Generator().manual_seed(stream_seed(cfg.seed, 0))
        self._streams: dict[int, Tensor] = {}  # rank -> generator state, for the ranks this copy does not run
        self._stats = ScopedStats("clip_cov")

    def begin_update(self, rank: int) -> None:
        """Draw from rank `rank`'s stream from now on; forget the other ranks' (they report their own)."""
        streams = {**self._streams, self.rank: self.generator.get_state()}
        self.rank = rank
        self.generator = torch.Generator()
        if rank in streams:
            self.generator.set_state(streams[rank])
        else:
            self.generator.manual_seed(stream_seed(self.cfg.seed, rank))
        self._streams = {}

    def state_dict(self) -> dict:
        """{"streams": {"rank": generator state as hex}} of every rank this copy knows (JSON-safe)."""
        streams = {**self._streams, self.rank: self.generator.get_state()}
        return {"streams": {str(r): bytes(st.tolist()).hex() for r, st in sorted(streams.items())}}

    def load_state_dict(self, state: dict) -> None:
        """Merge the given ranks' streams (a DeepSpeed rank reports only its own; a checkpoint holds all)."""
        for rank, hex_state in state.get("streams", {}).items():
            gen_state = torch.tensor(list(bytes.fromhex(hex_state)), dtype=torch.uint8)
            if int(rank) == self.rank:
                self.generator.set_state(gen_state)
            else:
                self._streams[int(rank)] = gen_state

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> ClipCovScopeStats:
        c = self.cfg
        return clip_cov_scope_stats(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, c.clip_low,
                                    c.clip_high, c.clip_cov_ratio, c.clip_cov_lb, c.clip_cov_ub, all_reduce)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        stats = None if self.scope == "micro_batch" else self._stats.get(inputs, self._compute_stats)
        return clip_cov_loss(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, c.clip_low,
                             c.clip_high, c.clip_cov_ratio, c.clip_cov_lb, c.clip_cov_ub, self.generator, stats)
