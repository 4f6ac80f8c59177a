"""Training health: the non-finite budget and the parameter check that stop a run before it destroys a model.

The same rules hold on the single-process learner and on every DeepSpeed rank (`core.update` for RL,
`preference.update` for DPO / TDPO / cDPO apply them; the shells only measure):

* Skips. A non-finite micro-batch loss or gradient norm skips its optimizer step on every rank and is counted
  (`actor/skipped_steps_total`, and `actor/skipped_steps_consecutive`; `train/...` for preference runs).
* Skip budget. `train.max_consecutive_skipped_steps` (default 10) optimizer steps skipped *in a row* stop the
  run with `TooManySkippedSteps`. Consecutive rather than total: an isolated overflow (one bad sample, a bf16
  spike) costs one step and is harmless even late in a long run, so a total budget would eventually stop
  healthy long runs; a run whose every step is skipped is not training at all and must stop early. The counter
  is reset by every applied step and kept in checkpoints (a resumed run continues it). null = never stop.
* Parameter check. After every applied optimizer step the learner measures max |theta| over its trainable
  parameters: one fused inf-norm reduction and one device sync per optimizer step (on DeepSpeed each rank
  measures its own parameters, its ZeRO-3 shard under stage 3, and the ranks all-reduce the maximum, so they
  agree and stop together). A non-finite value, or one above the limit, stops the update at once with
  `TrainingDiverged`: the error reaches the step loop before the weight sync, any evaluation and any
  checkpoint, so the last good checkpoint and its `latest` pointer stay as they were
  (creditrl/trainer/loop.py adds the step and that checkpoint to the message).
* Limit = max(`train.max_param_abs`, 10 x the largest initial |theta| of the trainable parameters). Default
  max_param_abs = 1e4: trained LLM weights, norms and biases stay far below (typically < 10, outliers in the
  hundreds), while a destroyed model is off by orders of magnitude (lr=1e30 gives |theta| ~ 1e30 after one Adam
  step). The relative term keeps a model whose weights start large from tripping at step 1. null = only
  non-finite parameters stop the run.

The errors derive from `TrainingStopped` (a user-facing error: the CLI prints its message without a
traceback); each carries the learner metrics of the step it stopped in (`.metrics`), which the loop writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

PARAM_GROWTH = 10.0  # the limit is never below this multiple of the largest initial |theta|


class TrainingStopped(RuntimeError):
    """The run was stopped on purpose because training went wrong; the message names the cause and the fix."""

    def __init__(self, message: str, metrics: dict[str, float] | None = None):
        super().__init__(message)
        self.metrics = dict(metrics or {})

    def __reduce__(self):
        return type(self), (str(self), self.metrics)


class TrainingDiverged(TrainingStopped):
    """A parameter became non-finite or exceeded the magnitude limit after an optimizer step."""


class TooManySkippedSteps(TrainingStopped):
    """`train.max_consecutive_skipped_steps` optimizer steps in a row had a non-finite loss or gradient."""


@dataclass
class Stop:
    """Why a rank stopped its update (sent to the driver, which raises it with the step's metrics)."""

    kind: str  # "diverged" | "skips"
    message: str

    def error(self, metrics: dict[str, float]) -> TrainingStopped:
        cls = TrainingDiverged if self.kind == "diverged" else TooManySkippedSteps
        return cls(self.message, metrics)


def max_abs(tensors: Iterable[Tensor]) -> float:
    """max |x| over the tensors (a single fused reduction); inf if any value is NaN or Inf, 0.0 if all empty."""
    ts = [t.detach() for t in tensors if t.numel()]
    if not ts:
        return 0.0
    norms = torch._foreach_norm(ts, float("inf"))
    value = float(torch.stack([n.float().to(norms[0].device) for n in norms]).max())
    return value if math.isfinite(value) else math.inf


def param_limit(initial_max_abs: float, max_param_abs: float | None) -> float:
    """The magnitude limit of a run (inf when `train.max_param_abs` is null: only non-finite values stop)."""
    if max_param_abs is None:
        return math.inf
    return max(float(max_param_abs), PARAM_GROWTH * initial_max_abs)


def check_params(value: float, limit: float, lr: float) -> Stop | None:
    """A `Stop` if the measured max |theta| (`value`, inf = non-finite) is not healthy, else None."""
    if math.isfinite(value) and value <= limit:
        return None
    what = ("a parameter became non-finite (NaN or Inf)" if not math.isfinite(value)
            else f"the largest parameter magnitude is {value:.3g}, above the limit {limit:.3g}")
    return Stop("diverged", (
        f"the model diverged: after an optimizer step with train.lr={lr:.3g}, {what}. The update "
        f"was not used: no weight sync, evaluation or checkpoint was made from these weights. Likely cause: the "
        f"learning rate is too high; lower train.lr (and check train.max_grad_norm / train.warmup_steps). If the "
        f"model's weights are legitimately that large, raise train.max_param_abs (null checks only for NaN/Inf)."))


def check_skips(consecutive: int, budget: int | None) -> Stop | None:
    """A `Stop` once `consecutive` optimizer steps in a row were skipped and that reaches the budget."""
    if budget is None or consecutive < budget:
        return None
    return Stop("skips", (
        f"{consecutive} optimizer steps in a row were skipped because the loss or the gradient norm was not "
        f"finite (train.max_consecutive_skipped_steps={budget}): the run is not training. Likely causes: "
        f"non-finite advantages or log-probs (check the reward functions' scores and the rollout log-probs), "
        f"a learning rate that is too high, or bf16 overflow (try model.autocast_bf16=false). Raise the budget "
        f"or set it to null to keep going anyway."))


def stopped_at(err: TrainingStopped, step: int, last_checkpoint) -> TrainingStopped:
    """The same error with the trainer step and the checkpoint to resume from added to its message."""
    where = (f"The last good checkpoint is untouched: {last_checkpoint} (fix the cause, then resume with "
             f"--resume or checkpoint.resume=auto)." if last_checkpoint is not None else
             "No checkpoint had been written yet (checkpoint.every_steps=0 saves only at the end), and none was "
             "written from the broken weights.")
    return type(err)(f"training stopped at step {step}: {err} {where}", err.metrics)
