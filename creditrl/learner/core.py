"""The learner step, written once: the single-process learner and every DeepSpeed rank run these functions.

A learner *shell* (`LocalLearner`, `DeepSpeedLearnerWorker`) only supplies what differs between them, the
`Shell` protocol below: a forward that returns per-token statistics, the reference log-probs, the lm_head
weight, backward, and the optimizer step. Everything else, i.e. what to compute for which algorithm part, how a
step is planned, how loss inputs are assembled, how metrics are reduced and what happens on a non-finite loss,
lives here, so the backends cannot drift apart.

    plan_batch      mini-batches of `mini_batch_prompts * n_samples` consecutive rows, each dealt to `world`
                    ranks balanced by tokens and split into micro-batches by `micro_batch_tokens_per_worker`
                    (world = 1: the single-process plan). The old pass uses the same micro-batches as the first
                    update pass, so the first on-policy ratio is exactly 1 (verl#6280).
    old_pass        no-grad pi_old statistics (log-probs, entropy, every fused-op output and hidden state a part
                    declares in `Algorithm.stats`) and the reference log-probs, for this rank's rows; left out
                    for the policy when the update is provably on-policy (`skips_old_pass`: one epoch of one
                    mini-batch, nothing needs pi_old first), pi_old then comes from the update's own forward
    store_old_stats merge the ranks' rows into `batch.stats`; mismatch and entropy metrics
    update          ppo_epochs x mini-batches: token-scope preparation, loss inputs, composed loss, backward,
                    one optimizer step per mini-batch; partial sums for `reduce_update`
    reduce_update   the step's metrics from every rank's partial sums

Aggregation: each micro-batch loss is normalised by the *global* mini-batch totals (`AggregationNorm` over all
ranks' rows), so sum over ranks and micro-batches = the mini-batch loss; the DeepSpeed shell back-propagates
W * loss because DeepSpeed averages gradients over W ranks.

Non-finite values (same rule on every backend): a non-finite micro-batch loss or gradient norm skips the whole
optimizer step of its mini-batch on every rank (the shells agree through the gradients: a rank that saw a
non-finite loss back-propagates NaN, which the gradient reduction carries to every rank); the skip is logged and
counted in `actor/skipped_steps_total` and `actor/skipped_steps_consecutive`. After every applied step the
parameters are checked (`Shell.param_max_abs`, reported as `actor/param_max_abs`). Too many skips in a row, or
non-finite / exploded parameters, end the update on every rank at the same point and `reduce_update` raises the
`TrainingStopped` error of creditrl/learner/health.py (the rules and defaults are documented there).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from creditrl.algorithms import Algorithm
from creditrl.algorithms.base import AggregationNorm, LossInputs, masked_mean
from creditrl.algorithms.mismatch import mismatch_metrics
from creditrl.algorithms.needs import StatRequest
from creditrl.config.schema import RecipeConfig
from creditrl.learner.batch import MicroBatch, RolloutBatch, make_micro_batch, partition_by_tokens
from creditrl.learner import health
from creditrl.learner.dp_split import MiniPlan, plan_step

log = logging.getLogger(__name__)


class Shell(Protocol):
    """What a learner backend supplies to the shared step."""

    pad_id: int
    pack_width: int  # `make_micro_batch`'s packed-groups layout (the model's hidden size), 0 = padded rows

    def forward(self, mb: MicroBatch, want: tuple[str, ...], keep_hidden: bool = False,
                kernel_options: dict | None = None) -> dict[str, Tensor]:
        """Policy statistics of a micro-batch: name -> [b, T] (hidden: [b, T, H]); grad-enabled in update."""
        ...

    def ref_logprobs(self, mb: MicroBatch) -> Tensor:
        """log pi_ref of the micro-batch's response tokens [b, T], no grad."""
        ...

    def head_weight(self) -> Tensor:
        """The full lm_head weight [V, H], detached (gathered under ZeRO-3: every rank must call)."""
        ...

    def backward(self, loss: Tensor) -> None: ...

    def step(self, finite: bool) -> float | None:
        """End of a mini-batch: clip and apply the update; the pre-clip gradient norm, or None if skipped
        (`finite` False, or a non-finite gradient norm)."""
        ...

    def set_train(self, mode: bool) -> None: ...

    param_limit: float  # `health.param_limit` of the run

    def param_max_abs(self) -> float:
        """max |theta| over the trainable parameters of every rank (inf if any is non-finite); every rank calls."""
        ...


# ---- planning ------------------------------------------------------------------------------------------------
def plan_batch(batch: RolloutBatch, cfg: RecipeConfig, world: int = 1) -> list[MiniPlan]:
    """The step's mini-batches, each split over `world` ranks into lockstep micro-batches."""
    lengths = [len(p) + int(n) for p, n in zip(batch.prompt_ids, batch.response_lengths)]
    mini_rows = cfg.mini_batch_prompts_resolved * cfg.rollout.n_samples
    return plan_step(lengths, mini_rows, world, cfg.train.micro_batch_tokens_per_worker)


# ---- old / reference pass -------------------------------------------------------------------------------------
def skips_old_pass(cfg: RecipeConfig, algorithm: Algorithm, plans: list[MiniPlan]) -> bool:
    """True when the policy's old pass can be left out without changing any result (`train.skip_old_pass`).

    The update is provably on-policy when it is one epoch of one mini-batch: pi_old are the weights the update's
    own forward runs with, so `old_logprobs` = that forward's log-probs, detached (the old pass computes the same
    numbers with the same micro-batches; `plan_batch`), and the ratio is exactly 1 on both paths. Nothing may need
    pi_old *before* the update: no fused-op statistics or hidden states of the old pass (Lp-Reg, THR/NTHR),
    no `token_stat_scope: global` (it prepares on pi_old), no KL in the reward (the advantages read pi_old).
    The update then forwards log-probs and entropy once, stores them as `old_logprobs` / `old_entropy`, and the
    old pass's metrics (`actor/entropy`, `mismatch/*`) come from them (`finish_update`). The reference
    log-probs, if the algorithm needs them, are still computed before the update (`old_pass(policy=False)`).
    """
    req, c = algorithm.stats, algorithm.cfg
    return (cfg.train.skip_old_pass and cfg.train.ppo_epochs == 1 and len(plans) == 1 and not req.old_kernel_stats
            and not req.old_hidden and c.token_stat_scope != "global" and not (c.kl.coef > 0 and
                                                                               c.kl.placement == "reward"))


@torch.no_grad()
def old_pass(shell: Shell, batch: RolloutBatch, request: StatRequest, plans: list[MiniPlan],
             rank: int = 0, policy: bool = True) -> dict:
    """pi_old (and pi_ref) statistics of this rank's real rows: {"rows": [n], stat: [n, T(, H)]}; with
    `policy=False` (`skips_old_pass`) only the reference log-probs.

    Padding micro-batches (ranks with fewer rows) run their forward too, so ZeRO-3 gathers stay in lockstep.
    """
    if not policy and not request.ref_logprobs:
        return {"rows": []}
    want = request.old_want if policy else ()
    kernel_options = dict(request.kernel_options) or None
    rows: list[int] = []
    parts: dict[str, list[Tensor]] = {}
    shell.set_train(False)
    try:
        for plan in plans:
            for spec in plan.micro[rank]:
                mb = make_micro_batch(batch, list(spec.rows), shell.pad_id, shell.pack_width)
                out = {}
                if policy:
                    stats = shell.forward(mb, want, request.old_hidden, kernel_options)
                    out = {k: stats[k] for k in list(want) + (["hidden"] if request.old_hidden else [])}
                if request.ref_logprobs:
                    out["ref_logp"] = shell.ref_logprobs(mb)
                if not spec.real:
                    continue
                rows += list(spec.rows)
                for k, v in out.items():
                    parts.setdefault(k, []).append(v.detach().cpu())
    finally:
        shell.set_train(True)
    return {"rows": rows, **{k: torch.cat(v, 0) for k, v in parts.items()}}


def store_old_stats(batch: RolloutBatch, parts: list[dict], request: StatRequest) -> dict[str, float]:
    """Merge the ranks' `old_pass` results into `batch.stats` (keys below); mismatch and entropy metrics.

    old_logprobs, old_entropy, old_<stat> for each fused-op statistic a part needs, old_hidden, ref_logprobs.
    """
    B, T = batch.mask.shape
    names = {"logp": "old_logprobs", "entropy": "old_entropy", "hidden": "old_hidden", "ref_logp": "ref_logprobs",
             **{s: f"old_{s}" for s in request.old_kernel_stats}}
    merged: dict[str, Tensor] = {}
    for part in parts:
        if not part["rows"]:
            continue
        idx = torch.tensor(part["rows"], dtype=torch.long)
        for k, key in names.items():
            if k not in part:
                continue
            v = part[k][:, :T]
            if key not in merged:
                merged[key] = torch.zeros((B, T) + tuple(v.shape[2:]), dtype=v.dtype)
            merged[key][idx] = v
    batch.stats.update(merged)
    if "old_logprobs" not in merged:  # the old pass was left out (`skips_old_pass`): metrics after the update
        return {}
    metrics = mismatch_metrics(merged["old_logprobs"], batch.rollout_logprobs, batch.mask)  # sampler vs trainer
    metrics["actor/entropy"] = masked_mean(merged["old_entropy"], batch.mask).item()
    return metrics


# ---- loss inputs and token-scope statistics ----------------------------------------------------------------------
@dataclass
class LossContext:
    """Per-step constants the loss inputs carry besides the batch."""

    request: StatRequest
    temperature: float
    head_weight: Tensor | None = None  # [V, H] with old_hidden (THR / NTHR)


def loss_inputs(batch: RolloutBatch, idx: Tensor, logp: Tensor, entropy: Tensor | None,
                ctx: LossContext) -> LossInputs:
    """The `LossInputs` of rows `idx` with the current policy's `logp` / `entropy` [b, T]."""
    s, req = batch.stats, ctx.request
    extras = {f"old_{k}": s[f"old_{k}"][idx] for k in req.old_kernel_stats}
    if req.old_hidden:  # THR / NTHR: hidden states, lm_head and the sampling temperature
        extras["old_hidden"] = s["old_hidden"][idx]
        extras["lm_head_weight"] = ctx.head_weight
        extras["temperature"] = torch.tensor(ctx.temperature, dtype=torch.float64)
    if req.response_ids:
        extras["response_ids"] = batch.response_ids[idx]
    return LossInputs(
        logprobs=logp,
        old_logprobs=s["old_logprobs"][idx],
        advantages=batch.advantages[idx],
        mask=batch.mask[idx],
        entropy=entropy,
        old_entropy=s["old_entropy"][idx],
        ref_logprobs=s["ref_logprobs"][idx] if "ref_logprobs" in s else None,
        rollout_logprobs=batch.rollout_logprobs[idx],
        group_ids=batch.group_ids[idx],
        extras=extras,
    )


def prepare_scope(shell: Shell, batch: RolloutBatch, rows: list[int], algorithm: Algorithm, ctx: LossContext,
                  current: bool, micro_budget: int) -> None:
    """token_stat_scope mini_batch / global: hand the parts the no-grad statistics of the whole scope.

    current=True: a no-grad forward of the policy as it is now (start of a mini-batch); False: pi_old from the
    old pass (global scope, start of the step). Every rank prepares on the whole scope (same rows and forward
    count on every rank, so ZeRO-3 gathers stay in lockstep), so no cross-rank reduction is needed.
    """
    idx = torch.tensor(rows, dtype=torch.long)
    if current:
        lp = torch.zeros(len(rows), batch.mask.shape[1])
        ent = torch.zeros_like(lp)
        lengths = [len(batch.prompt_ids[i]) + int(batch.mask[i].sum()) for i in rows]
        with torch.no_grad():
            for part in partition_by_tokens(lengths, micro_budget):
                mb = make_micro_batch(batch, [rows[j] for j in part], shell.pad_id, shell.pack_width)
                st = shell.forward(mb, ("logp", "entropy"))
                pos = torch.tensor(part, dtype=torch.long)
                lp[pos], ent[pos] = st["logp"].cpu(), st["entropy"].cpu()
    else:
        lp, ent = batch.stats["old_logprobs"][idx], batch.stats["old_entropy"][idx]
    algorithm.prepare(loss_inputs(batch, idx, lp, ent, ctx))


# ---- the update --------------------------------------------------------------------------------------------------
@dataclass
class StepSums:
    """What a rank's applied optimizer steps of one update add up (policy and critic alike); `reduce_sums`."""

    sums: dict[str, float] = field(default_factory=dict)  # token-weighted metric sums
    weight: float = 0.0  # tokens behind `sums`
    losses: list[float] = field(default_factory=list)  # this rank's share of each applied mini-batch loss
    grad_norms: list[float] = field(default_factory=list)  # global pre-clip norm of each applied step


def reduce_sums(parts: list[StepSums]) -> tuple[dict[str, float], float, float]:
    """(token-weighted metric means, mean mini-batch loss, mean gradient norm) over every rank's part; NaN loss and
    norm when no step was applied. A mini-batch's loss is the sum of the ranks' shares; its gradient norm is the
    global one, the same on every rank."""
    weight = sum(p.weight for p in parts)
    sums: dict[str, float] = {}
    for p in parts:
        for k, v in p.sums.items():
            sums[k] = sums.get(k, 0.0) + v
    means = {k: v / max(weight, 1.0) for k, v in sums.items()}
    mini_losses = [sum(vals) for vals in zip(*(p.losses for p in parts))]
    grad_norms = parts[0].grad_norms
    loss = sum(mini_losses) / len(mini_losses) if mini_losses else math.nan
    norm = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
    return means, loss, norm


@dataclass
class UpdatePart(StepSums):
    """One rank's share of a step's update, reduced by `reduce_update`."""

    skipped_steps: int = 0  # cumulative (the shell's counter)
    consecutive_skipped: int = 0  # optimizer steps skipped in a row, up to now (the shell's counter)
    param_max_abs: float = math.nan  # max |theta| after the last applied step (NaN: no step applied)
    stop: health.Stop | None = None  # why the update ended early; `reduce_update` raises it
    lr: float = 0.0
    algorithm_state: dict | None = None
    old_stats: dict | None = None  # `skips_old_pass`: this rank's rows' pi_old log-probs / entropy, as `old_pass`


@dataclass
class MiniBatchResult:
    """What one mini-batch's micro-batches left on this rank: the loss share, token-weighted metric sums."""

    finite: bool = True  # False once a micro-batch loss was non-finite (the step must be skipped)
    loss: float = 0.0  # this rank's share of the mini-batch loss
    sums: dict[str, float] = field(default_factory=dict)
    weight: float = 0.0  # tokens behind `sums`


def accumulate_mini_batch(shell, batch: RolloutBatch, specs, forward, loss_of, rank: int,
                          what: str = "loss") -> MiniBatchResult:
    """Forward and backward of this rank's micro-batches `specs` of one mini-batch (policy and critic alike).

    `forward(mb) -> (out, anchor)`: the model outputs and a tensor on their graph; `loss_of(mb, out) -> (loss,
    metrics)`. A padding micro-batch, or any after a non-finite loss, back-propagates `anchor` x 0 (ZeRO-3 and the
    gradient all-reduce stay in lockstep) or x NaN (every rank then skips the step: the gradients carry it).
    """
    res = MiniBatchResult()
    for spec in specs:
        mb = make_micro_batch(batch, list(spec.rows), shell.pad_id, shell.pack_width)
        out, anchor = forward(mb)
        if spec.real and res.finite:
            loss, metrics = loss_of(mb, out)
            if torch.isfinite(loss):
                shell.backward(loss)
                res.loss += loss.item()
                w = float(mb.mask.sum())
                res.weight += w
                for k, v in metrics.items():
                    res.sums[k] = res.sums.get(k, 0.0) + w * float(v)
                continue
            res.finite = False
            log.warning("rank %d: non-finite %s in a micro-batch: the optimizer step is skipped", rank, what)
        shell.backward((anchor * (0.0 if res.finite else float("nan"))).sum())
    return res


def record_step(out, grad_norm: float, res: MiniBatchResult) -> None:
    """Add an applied step's gradient norm, loss share and metric sums to a rank's update part."""
    out.grad_norms.append(grad_norm)
    out.losses.append(res.loss)
    out.weight += res.weight
    for k, v in res.sums.items():
        out.sums[k] = out.sums.get(k, 0.0) + v


def after_step(shell: Shell, grad_norm: float | None, out, cfg: RecipeConfig, rank: int) -> None:
    """Bookkeeping after an optimizer step (RL and preference): count a skip and check the skip budget, or check
    the parameters of an applied step. Sets `out.stop` when the update must end (the same on every rank: the skip
    decision and the measured maximum are global)."""
    if grad_norm is None:
        out.skipped_steps += 1
        out.consecutive_skipped += 1
        log.warning("rank %d: non-finite loss or gradient norm: optimizer step skipped (%d skipped so far, %d in a "
                    "row)", rank, out.skipped_steps, out.consecutive_skipped)
        out.stop = health.check_skips(out.consecutive_skipped, cfg.train.max_consecutive_skipped_steps)
        return
    out.consecutive_skipped = 0
    out.param_max_abs = shell.param_max_abs()
    out.stop = health.check_params(out.param_max_abs, shell.param_limit, cfg.train.lr)


def update(shell: Shell, batch: RolloutBatch, algorithm: Algorithm, plans: list[MiniPlan], cfg: RecipeConfig,
           rank: int = 0, skipped_before: int = 0, consecutive_before: int = 0) -> UpdatePart:
    """ppo_epochs x mini-batches of optimizer steps over this rank's micro-batches (ends early with `out.stop`)."""
    req, scope = algorithm.stats, algorithm.cfg.token_stat_scope
    budget = cfg.train.micro_batch_tokens_per_worker
    ctx = LossContext(req, cfg.rollout.temperature, shell.head_weight() if req.old_hidden else None)
    out = UpdatePart(skipped_steps=skipped_before, consecutive_skipped=consecutive_before)
    on_policy = skips_old_pass(cfg, algorithm, plans)
    want = ("logp", "entropy") if on_policy else req.train_want
    if on_policy:  # filled by the forward below, before each micro-batch's loss reads them
        batch.stats["old_logprobs"] = torch.zeros_like(batch.mask, dtype=torch.float32)
        batch.stats["old_entropy"] = torch.zeros_like(batch.mask, dtype=torch.float32)
    algorithm.begin_update(rank)
    if scope == "global":
        prepare_scope(shell, batch, list(range(len(batch))), algorithm, ctx, current=False, micro_budget=budget)
    for _ in range(cfg.train.ppo_epochs):
        if out.stop is not None:
            break
        for plan in plans:
            if scope == "mini_batch":
                prepare_scope(shell, batch, list(plan.rows), algorithm, ctx, current=True, micro_budget=budget)
            mask = batch.mask[list(plan.rows)]
            norm = AggregationNorm(num_tokens=mask.sum().clamp_min(1).item(),
                                   num_seqs=(mask.sum(-1) > 0).sum().clamp_min(1).item())

            def forward(mb):
                stats = shell.forward(mb, want)
                if on_policy:
                    for key, name in (("old_logprobs", "logp"), ("old_entropy", "entropy")):
                        batch.stats[key][mb.index] = stats[name].detach().to(batch.stats[key].dtype)
                return stats, stats["logp"]

            def loss_of(mb, stats):
                entropy = stats.get("entropy") if req.entropy else None
                return algorithm.loss(loss_inputs(batch, mb.index, stats["logp"], entropy, ctx), norm)

            res = accumulate_mini_batch(shell, batch, plan.micro[rank], forward, loss_of, rank)
            grad_norm = shell.step(res.finite)
            after_step(shell, grad_norm, out, cfg, rank)
            if out.stop is not None:
                break
            if grad_norm is not None:
                record_step(out, grad_norm, res)
    out.algorithm_state = algorithm.state_dict()
    if on_policy:
        rows = [r for spec in plans[0].micro[rank] if spec.real for r in spec.rows]
        idx = torch.tensor(rows, dtype=torch.long)
        out.old_stats = {"rows": rows, "logp": batch.stats["old_logprobs"][idx].cpu(),
                         "entropy": batch.stats["old_entropy"][idx].cpu()}
    return out


def finish_update(batch: RolloutBatch, parts: list[UpdatePart], lr: float, request: StatRequest) -> dict[str, float]:
    """The step's update metrics from every rank's part (`reduce_update`); when the old pass was left out
    (`skips_old_pass`), also store the ranks' pi_old rows in `batch.stats` and add the old pass's metrics."""
    metrics = {}
    if parts[0].old_stats is not None:
        metrics = store_old_stats(batch, [p.old_stats for p in parts], request)
    return {**metrics, **reduce_update(parts, lr)}


def reduce_update(parts: list[UpdatePart], lr: float) -> dict[str, float]:
    """The step's metrics: token-weighted part metrics, mean mini-batch loss and gradient norm (0 when every step
    was skipped), lr, skips."""
    out, loss, norm = reduce_sums(parts)
    out["actor/pg_loss"] = 0.0 if math.isnan(loss) else loss
    out["actor/grad_norm"] = 0.0 if math.isnan(norm) else norm
    out["actor/lr"] = lr
    out["actor/skipped_steps_total"] = float(parts[0].skipped_steps)
    out["actor/skipped_steps_consecutive"] = float(parts[0].consecutive_skipped)
    if not math.isnan(parts[0].param_max_abs):
        out["actor/param_max_abs"] = parts[0].param_max_abs
    if parts[0].stop is not None:  # the same on every rank
        raise parts[0].stop.error(out)
    return out
