"""The critic step, written once: the value model of PPO with GAE (`critic:` + `algorithm.advantage: gae`).

A critic *shell* supplies what differs between backends (`CriticShell` below: the value forward, backward, the
optimizer step); everything else lives here, the way `creditrl/learner/core.py` holds the policy's step:

    old_values      no-grad V_old [B, T] of this rank's rows, over the same micro-batches as the policy's old pass
                    (`core.plan_batch`); they feed GAE and anchor the value clipping
    store_values    merge the ranks' rows into `batch.stats["old_values"]`
    update          ppo_epochs x mini-batches (the policy's plan) of clipped value-loss optimizer steps against
                    `batch.stats["returns"]` (GAE's R_t); partial sums for `reduce_update`
    reduce_update   the step's `critic/*` metrics from every rank's partial sums

Value loss (verl `compute_value_loss`, token-mean over the mini-batch's valid tokens, normalised by the global
mini-batch token count so that micro-batch losses sum to the mini-batch loss):

    L = 0.5 * mean_m( max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2) )      eps = critic.cliprange_value

The 0.5 factor is verl's (`vf_loss = 0.5 * agg_loss(...)`), as in OpenAI baselines' PPO2 and TRL's PPOTrainer
(`0.5 * masked_mean(max(vf_losses1, vf_losses2))`); without clipping (cliprange_value null) L = 0.5 mean (V - R)^2.

Metrics: critic/value_loss (mean over the step's mini-batch steps), critic/clipfrac (share of valid tokens where the
clipped term is the larger one), critic/grad_norm (pre-clip, mean over steps), critic/lr, critic/values_mean (V_old
over valid tokens), critic/explained_variance = 1 - Var_m(R - V_old) / Var_m(R) over the step's valid tokens (verl
`vf_explained_var`, + 1e-5 in the denominator: how much of the fresh batch's returns the critic predicted before updating on it),
critic/skipped_steps_total. A non-finite value loss or gradient norm skips that critic step (counted); as many in a
row as `train.max_consecutive_skipped_steps` (counted by the driver, checked after each critic update) stop the
run (`TooManySkippedSteps`, creditrl/learner/health.py).

The shells: `LocalCritic` (creditrl/learner/critic_local.py) on the local backend; on Ray, `DeepSpeedCritic`
(creditrl/learner/critic_deepspeed.py): the value model in its own DeepSpeed engine inside every learner rank actor
(colocated with the policy's ranks, same process group), driven by `RayCritic` (creditrl/distributed/critic.py).
Both drivers keep a `CriticProgress`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from creditrl.algorithms.base import masked_mean
from creditrl.learner.batch import MicroBatch, RolloutBatch, make_micro_batch
from creditrl.learner import health
from creditrl.learner.core import StepSums, accumulate_mini_batch, record_step, reduce_sums
from creditrl.learner.dp_split import MiniPlan

log = logging.getLogger(__name__)


class CriticShell(Protocol):
    """What a critic backend supplies to the shared critic step."""

    pad_id: int
    pack_width: int  # as the policy Shell's (creditrl/learner/core.py)

    def values(self, mb: MicroBatch) -> Tensor:
        """V_t of the micro-batch's response tokens [b, T] (fp32, 0 at padding); grad-enabled in update."""
        ...

    def backward(self, loss: Tensor) -> None: ...

    def step(self, finite: bool) -> float | None:
        """End of a mini-batch: clip and apply; the pre-clip gradient norm, or None if skipped."""
        ...

    def set_train(self, mode: bool) -> None: ...


def critic_train_config(cfg):
    """The `train:` settings the critic's optimizer is built from: `critic.lr` constant (no warm-up, no decay),
    `critic.weight_decay`, `critic.max_grad_norm`; the rest (betas, eps) as the policy's."""
    from dataclasses import replace

    c = cfg.critic
    return replace(cfg.train, lr=c.lr, lr_schedule="constant", warmup_steps=0, weight_decay=c.weight_decay,
                   max_grad_norm=c.max_grad_norm)


@dataclass
class CriticProgress:
    """The critic's counters, kept by the driver on every backend and checkpointed: critic updates done (the
    warm-up counter: the policy update is skipped while `warming_up`) and critic steps skipped as non-finite, in
    total and in a row (the skip budget `train.max_consecutive_skipped_steps` applies to the critic too)."""

    warmup_steps: int
    updates: int = 0
    skipped_steps: int = 0
    consecutive_skipped: int = 0

    @property
    def warming_up(self) -> bool:
        """True while the steps done so far are all critic warm-up steps."""
        return self.updates <= self.warmup_steps

    def record(self, part: "CriticPart", budget: int | None) -> health.Stop | None:
        """Count one critic update (`part`: any rank's share; the applied / skipped sequence is the same on every
        rank); a `Stop` when the skips in a row reach `budget`."""
        self.updates += 1
        for applied in part.applied:
            self.consecutive_skipped = 0 if applied else self.consecutive_skipped + 1
            self.skipped_steps += 0 if applied else 1
        stop = health.check_skips(self.consecutive_skipped, budget)
        return None if stop is None else health.Stop(stop.kind, f"critic: {stop.message}")

    def save(self, directory: Path) -> None:
        """`directory/progress.json` (a checkpoint's critic/ folder)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PROGRESS_FILE).write_text(json.dumps({"updates": self.updates, "skipped_steps": self.skipped_steps,
                                                           "consecutive_skipped": self.consecutive_skipped}))

    def load(self, directory: Path) -> None:
        path = directory / PROGRESS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {directory.parent} has no critic counters ({path}): was it written "
                                    f"by a run without a `critic:` section?")
        state = json.loads(path.read_text())
        self.updates, self.skipped_steps = int(state["updates"]), int(state["skipped_steps"])
        self.consecutive_skipped = int(state.get("consecutive_skipped", 0))


PROGRESS_FILE = "progress.json"


# ---- values before the update ------------------------------------------------------------------------------------
@torch.no_grad()
def old_values(shell: CriticShell, batch: RolloutBatch, plans: list[MiniPlan], rank: int = 0) -> dict:
    """V_old of this rank's real rows: {"rows": [n], "values": [n, T]} (padding micro-batches run for lockstep)."""
    rows: list[int] = []
    parts: list[Tensor] = []
    shell.set_train(False)
    try:
        for plan in plans:
            for spec in plan.micro[rank]:
                v = shell.values(make_micro_batch(batch, list(spec.rows), shell.pad_id, shell.pack_width))
                if spec.real:
                    rows += list(spec.rows)
                    parts.append(v.detach().float().cpu())
    finally:
        shell.set_train(True)
    T = batch.mask.shape[1]
    return {"rows": rows, "values": torch.cat(parts, 0)[:, :T] if parts else torch.zeros(0, T)}


def store_values(batch: RolloutBatch, parts: list[dict]) -> dict[str, float]:
    """Merge the ranks' `old_values` into `batch.stats["old_values"]` [B, T]; critic/values_mean."""
    values = torch.zeros(batch.mask.shape, dtype=torch.float32)
    for part in parts:
        if part["rows"]:
            values[torch.tensor(part["rows"], dtype=torch.long)] = part["values"]
    values = values * batch.mask
    batch.stats["old_values"] = values
    return {"critic/values_mean": masked_mean(values, batch.mask).item()}


# ---- the loss ------------------------------------------------------------------------------------------------------
def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange: float | None,
               num_tokens: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """0.5 x token-mean of the (clipped) squared error (module docstring); `num_tokens`: the global mini-batch
    token count (None: this micro-batch's). Metrics: critic/clipfrac, critic/vpred_mean (token sums / n, weight n).
    """
    m = mask.to(values.dtype)
    err1 = (values - returns).square()
    if cliprange is not None:
        clipped = old_values + (values - old_values).clamp(-cliprange, cliprange)
        err2 = (clipped - returns).square()
        per_token = torch.maximum(err1, err2)
        clipfrac = masked_mean((err2 > err1).float(), mask).item()
    else:
        per_token, clipfrac = err1, 0.0
    n = float(m.sum()) if num_tokens is None else num_tokens
    loss = 0.5 * (per_token * m).sum() / max(n, 1.0)
    return loss, {"critic/clipfrac": clipfrac, "critic/vpred_mean": masked_mean(values.detach(), mask).item()}


def explained_variance(returns: Tensor, values: Tensor, mask: Tensor) -> float:
    """1 - Var_m(R - V) / (Var_m(R) + 1e-5) over valid tokens (unbiased variances; verl `compute_data_metrics`
    `vf_explained_var`, whose 1e-5 keeps it finite when every return is equal); 0 with fewer than 2 tokens."""
    m = mask.to(torch.float64)
    n = m.sum()
    if n < 2:
        return 0.0

    def var(x: Tensor) -> Tensor:
        x = x.to(torch.float64)
        mean = (x * m).sum() / n
        return ((x - mean).square() * m).sum() / (n - 1)

    return float(1.0 - var(returns.to(torch.float64) - values.to(torch.float64)) / (var(returns) + 1e-5))


# ---- the update ----------------------------------------------------------------------------------------------------
@dataclass
class CriticPart(StepSums):
    """One rank's share of a critic update, reduced by `reduce_update`."""

    applied: list[bool] = field(default_factory=list)  # per critic step, in order: applied (True) or skipped


def update(shell: CriticShell, batch: RolloutBatch, plans: list[MiniPlan], ppo_epochs: int,
           cliprange: float | None, rank: int = 0) -> CriticPart:
    """ppo_epochs x mini-batches of critic optimizer steps over this rank's micro-batches.

    Needs `batch.stats["old_values"]` (`store_values`) and `batch.stats["returns"]` (GAE's R_t).
    """
    if "returns" not in batch.stats or "old_values" not in batch.stats:
        raise ValueError("the critic update needs batch.stats old_values and returns (algorithm.advantage gae)")
    old, returns = batch.stats["old_values"], batch.stats["returns"]
    out = CriticPart()
    for _ in range(ppo_epochs):
        for plan in plans:
            num_tokens = batch.mask[list(plan.rows)].sum().clamp_min(1).item()

            def forward(mb):
                v = shell.values(mb)
                return v, v

            def loss_of(mb, v):
                return value_loss(v, old[mb.index], returns[mb.index], mb.mask, cliprange, num_tokens)

            res = accumulate_mini_batch(shell, batch, plan.micro[rank], forward, loss_of, rank, "critic loss")
            grad_norm = shell.step(res.finite)
            out.applied.append(grad_norm is not None)
            if grad_norm is None:
                log.warning("rank %d: non-finite critic loss or gradient norm: critic step skipped", rank)
                continue
            record_step(out, grad_norm, res)
    return out


def finish_update(parts: list[CriticPart], lr: float, batch: RolloutBatch, progress: CriticProgress,
                  budget: int | None) -> dict[str, float]:
    """What a driver does with the ranks' shares of one critic update: count it in `progress`, reduce the
    metrics, and raise `TooManySkippedSteps` (with the metrics) when the skip budget is used up."""
    stop = progress.record(parts[0], budget)
    metrics = reduce_update(parts, lr, batch, progress)
    if stop is not None:
        raise stop.error(metrics)
    return metrics


def reduce_update(parts: list[CriticPart], lr: float, batch: RolloutBatch,
                  progress: CriticProgress) -> dict[str, float]:
    """The step's critic metrics: loss, clip fraction, gradient norm, lr, skips, and the explained variance of the
    old values (before this step's update) on the step's returns."""
    out, out["critic/value_loss"], out["critic/grad_norm"] = reduce_sums(parts)
    out["critic/lr"] = lr
    out["critic/skipped_steps_total"] = float(progress.skipped_steps)
    out["critic/explained_variance"] = explained_variance(batch.stats["returns"], batch.stats["old_values"],
                                                          batch.mask)
    return out
