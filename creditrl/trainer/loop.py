"""The step loop, top to bottom: one loop for every backend and for both kinds of runs.

`creditrl/trainer/runtime.py` supplies the rollout engine, the learner and weight sync of `resources.backend`;
a `StepKind` supplies what differs between an RL run and an offline preference run (`preference:` section):

    RLSteps          gen        sample n responses for each of `global_batch_prompts` prompts
                     reward     score them (a raising reward scores 0 and is counted)
                     filter     DAPO dynamic sampling (optional): drop groups whose rewards are all equal
                     old/ref    per-token log-probs (and entropy etc.) of pi_old and pi_ref
                     adv        advantages (KL-in-reward first, if configured)
                     update     ppo_epochs x mini-batches of optimizer steps with the composed loss
                     eval       held-out greedy accuracy / pass@k through the rollout engine
    PreferenceSteps  update     `preference.batch_pairs` pairs from the pair sampler, one optimizer step
    (trainer/        eval       held-out pair metrics (the learner) + greedy task accuracy (the rollout engine)
     preference.py)

and the loop does the rest, once: resume, weight sync after every update (version += 1, so the engine used for
evaluation has the new weights on every backend), evaluation when due, checkpoints, metrics to JSONL
(+ TensorBoard), one console line per step, and the end-of-run evaluation.

A learner that stops the run (`TrainingStopped`, creditrl/learner/health.py: diverged parameters, too many
skipped steps in a row) raises out of `run_step`, before the step's weight sync, evaluation and checkpoint: the
loop writes the step's learner metrics and re-raises with the step and the last good checkpoint named.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from creditrl.algorithms import Algorithm
from creditrl.algorithms.dynamic_sampling import dynamic_sampling_keep_mask
from creditrl.config import RecipeConfig, dump_yaml
from creditrl.data import PromptSampler, load_prompt_datasets
from creditrl.rewards import RewardManager
from creditrl.rollout.base import RolloutOutput, SamplingParams
from creditrl.rollout.stopping import stop_kwargs
from creditrl.trainer import checkpoint as ckpt
from creditrl.learner.batch import RolloutBatch
from creditrl.learner.health import TrainingStopped, stopped_at
from creditrl.trainer.evaluate import evaluate_task, reward_samples
from creditrl.learner.local import count_optimizer_steps
from creditrl.models.build import load_tokenizer
from creditrl.trainer.metrics import MetricsWriter, summary_line
from creditrl.trainer.progress import StepProgress
from creditrl.trainer.preference import PreferenceSteps
from creditrl.trainer.runtime import Runtime, make_runtime

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_run_data(cfg: RecipeConfig, tokenizer=None):
    """(tokenizer, train prompts, eval prompts capped at eval.max_prompts, prompt sampler) of a recipe."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.path)
    train_data, eval_data = load_prompt_datasets(cfg.data, tokenizer, cfg.seed)
    if cfg.eval.max_prompts and len(eval_data) > cfg.eval.max_prompts:
        eval_data.rows = eval_data.rows[: cfg.eval.max_prompts]
    return tokenizer, train_data, eval_data, PromptSampler(len(train_data), cfg.seed, cfg.data.shuffle)


def score_rollout(out: RolloutOutput, prompts: list, tokenizer, rewards: RewardManager, step: int):
    samples = reward_samples(out, prompts, tokenizer, lambda j: f"step{step}/p{out.prompt_index[j]}/s{j}")
    return rewards.score(samples)


def build_batch(out: RolloutOutput, prompts: list, scores: list[float], pad_id: int, group_offset: int,
                components: list[list[float]] | None = None, weights: list[float] | None = None) -> RolloutBatch:
    """The RolloutBatch of generated rows; `components` [B][K] / `weights` [K]: each reward function's unweighted
    score and weight (for advantages that treat the functions separately, e.g. GRPO `normalize_then_sum`)."""
    ids, mask, lps = out.padded(pad_id)
    return RolloutBatch(
        prompt_ids=out.prompt_ids,
        response_ids=ids,
        mask=mask,
        rollout_logprobs=lps,
        rewards=torch.tensor(scores, dtype=torch.float32),
        group_ids=torch.tensor([group_offset + i for i in out.prompt_index], dtype=torch.long),
        prompt_keys=[prompts[i].key for i in out.prompt_index],
        finished=torch.tensor(out.finished, dtype=torch.bool),
        weight_version=out.weight_version,
        reward_components=None if components is None else torch.tensor(components, dtype=torch.float32),
        reward_weights=None if weights is None else torch.tensor(weights, dtype=torch.float32),
    )


def _select_prompts(out: RolloutOutput, per_row: list, keep: list[int], n: int):
    """The rows of the prompts `keep` (n samples each), and the matching entries of `per_row`."""
    rows = [p * n + j for p in keep for j in range(n)]
    sel = RolloutOutput([out.prompt_ids[r] for r in rows], [out.response_ids[r] for r in rows],
                        [out.logprobs[r] for r in rows], [out.finished[r] for r in rows],
                        [i for i, _ in enumerate(keep) for _ in range(n)], out.weight_version)
    return sel, [per_row[r] for r in rows]


def _row_rewards(rb, names: list[str]) -> list[tuple[float, list[float]]]:
    """(weighted score, [unweighted score of each function]) of every row of a RewardBatch."""
    return [(s, [rb.components[k][i] for k in names]) for i, s in enumerate(rb.scores)]


def rollout_seed(seed: int, step: int, round_: int) -> int:
    """The sampling seed of one generation call: a pure function of (run seed, step, dynamic-sampling round).

    Every engine (HF generate, vLLM, a Ray rollout group, which derives one seed per actor chunk from it) samples
    from this seed alone, so no sampler RNG state has to be checkpointed: a resumed run draws exactly the
    samples the uninterrupted run drew (for vLLM: where its seeded sampling is deterministic, docs/rollout.md).
    """
    return (seed * 1_000_003 + step * 1_009 + round_) % (2**31 - 1)


def generate_and_score(cfg: RecipeConfig, step: int, engine, sampler: PromptSampler, train_data, tokenizer,
                       rewards: RewardManager, timing: dict) -> tuple[RolloutBatch, dict[str, float]]:
    rc = cfg.rollout
    params = SamplingParams(rc.n_samples, rc.temperature, rc.top_p, rc.max_new_tokens, top_k=rc.top_k, min_p=rc.min_p,
                            **stop_kwargs(cfg, tokenizer))
    want = cfg.train.global_batch_prompts
    rounds = cfg.train.dynamic_sampling_max_rounds if cfg.train.dynamic_sampling else 1
    kept_outs, kept_scores, kept_prompts = [], [], []  # kept_scores: per round, _row_rewards of the kept rows
    names = [r.name for r in rewards.rewards]
    metrics: dict[str, float] = {}
    reward_batches = []
    for r in range(rounds):
        need = want - len(kept_prompts)
        prompts = [train_data[i] for i in sampler.next_indices(need if r == 0 else want)]
        t0 = time.perf_counter()
        out = engine.generate([list(p.prompt_ids) for p in prompts],
                              replace(params, seed=rollout_seed(cfg.seed, step, r)))
        t1 = time.perf_counter()
        rb = score_rollout(out, prompts, tokenizer, rewards, step)
        timing["gen"] = timing.get("gen", 0.0) + t1 - t0
        timing["reward"] = timing.get("reward", 0.0) + time.perf_counter() - t1
        reward_batches.append(rb)
        if not cfg.train.dynamic_sampling:
            kept_outs, kept_scores, kept_prompts = [out], [_row_rewards(rb, names)], prompts
            break
        keep_mask, ds_metrics = dynamic_sampling_keep_mask(torch.tensor(rb.scores), torch.tensor(out.prompt_index))
        keep = [p for p in sorted(set(out.prompt_index)) if keep_mask[p * rc.n_samples]][:need]
        if r == 0:
            metrics.update(ds_metrics)
        sel, sel_scores = _select_prompts(out, _row_rewards(rb, names), keep, rc.n_samples)
        kept_outs.append(sel)
        kept_scores.append(sel_scores)
        kept_prompts += [prompts[p] for p in keep]
        if len(kept_prompts) >= want:
            break
    if cfg.train.dynamic_sampling:
        metrics["dynamic_sampling/rounds"] = float(len(reward_batches))
        metrics["dynamic_sampling/kept_prompts"] = float(len(kept_prompts))
        if not kept_prompts:  # every group was uniform: train on the last round as is (advantages are 0)
            kept_outs, kept_scores, kept_prompts = [out], [_row_rewards(rb, names)], prompts
    merged = RolloutOutput.concat(kept_outs)
    rows = [row for part in kept_scores for row in part]
    batch = build_batch(merged, kept_prompts, [s for s, _ in rows], tokenizer.pad_token_id,
                        group_offset=step * 1_000_000, components=[c for _, c in rows],
                        weights=[r.weight for r in rewards.rewards])
    first = reward_batches[0]
    metrics.update(first.metrics())
    metrics["reward/failures"] = float(sum(rb.failures for rb in reward_batches))
    primary = rewards.rewards[0].name
    metrics["train/accuracy"] = float(np.mean([s >= 1 - 1e-9 for s in first.components[primary]]))
    lengths = batch.response_lengths.float()
    metrics["response/length_mean"] = lengths.mean().item()
    metrics["response/length_max"] = lengths.max().item()
    metrics["response/truncated_frac"] = 1.0 - batch.finished.float().mean().item()
    return batch, metrics


def perf_metrics(batch: RolloutBatch, timing: dict[str, float], step_time: float) -> dict[str, float]:
    """Throughput and stage timings of one step (same keys on the single-process and the Ray path).

    rollout tokens/s = response tokens / gen time; learner tokens/s = (prompt + response tokens) / (old-stats
    pass + update time); tokens/s = all tokens / step time.
    """
    response_tokens = float(batch.mask.sum())
    n_tokens = response_tokens + sum(len(p) for p in batch.prompt_ids)
    out = {"perf/tokens_per_s": n_tokens / step_time,
           "perf/rollout_tokens_per_s": response_tokens / max(timing.get("gen", 0.0), 1e-9),
           "perf/learner_tokens_per_s": n_tokens / max(timing.get("old_log_prob", 0.0)
                                                       + timing.get("update_actor", 0.0), 1e-9),
           "perf/weight_version": float(batch.weight_version),
           "train/samples": float(len(batch))}
    out.update({f"timing_s/{k}": v for k, v in timing.items()})
    out["timing_s/step"] = step_time
    return out


def learn(batch: RolloutBatch, learner, algorithm: Algorithm, timing: dict[str, float],
          critic=None) -> dict[str, float]:
    """The learner stages of one step, timed under verl's keys: old (and reference) per-token stats, then
    advantages (filled into `batch.advantages`), then the policy update. Same on both training paths.

    With a critic (PPO with GAE, creditrl/learner/critic.py): its values V_old after the old pass ("values"), GAE
    from them, then the critic update on GAE's returns ("update_critic") before the policy update, which is skipped
    during the critic's warm-up steps (`critic.warmup_steps`; `critic/warmup` = 1 then)."""
    t0 = time.perf_counter()
    metrics = learner.compute_old_stats(batch, algorithm)
    timing["old_log_prob"] = time.perf_counter() - t0
    if critic is not None:
        t0 = time.perf_counter()
        metrics.update(critic.compute_values(batch))
        timing["values"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batch.advantages, adv_metrics = algorithm.advantages(_adv_inputs(batch), batch.stats.get("ref_logprobs"))
    metrics.update(adv_metrics)
    timing["adv"] = time.perf_counter() - t0

    if critic is not None:
        returns = getattr(algorithm.advantage, "returns", None)
        if returns is None:
            raise ValueError("the critic needs returns from the advantage estimator (algorithm.advantage: gae)")
        batch.stats["returns"] = returns
        t0 = time.perf_counter()
        metrics.update(critic.update(batch))
        timing["update_critic"] = time.perf_counter() - t0
        metrics["critic/warmup"] = float(critic.warming_up)
        if critic.warming_up:
            return metrics

    t0 = time.perf_counter()
    metrics.update(learner.update(batch, algorithm))
    timing["update_actor"] = time.perf_counter() - t0
    return metrics


def save_step(run_dir: Path, step: int, learner, tokenizer, state: dict, config_yaml: str,
              cfg: RecipeConfig, critic=None) -> float:
    """Checkpoint after `step` (learner state, the critic's if any, + `state`: the kind's data position /
    algorithm state and the evaluation before training); returns the seconds taken."""
    t0 = time.perf_counter()
    ckpt.save_checkpoint(run_dir, step, learner, tokenizer, state, config_yaml, cfg.checkpoint.keep, critic)
    return time.perf_counter() - t0


class StepKind(Protocol):
    """What differs between the kinds of runs; everything else is the loop's (`_run`)."""

    label: str  # the progress bar's label

    def describe(self) -> str:
        """One log line about the run's data."""
        ...

    def run_step(self, step: int, runtime: Runtime, timing: dict[str, float]) -> dict[str, float]:
        """The data and learner part of step `step` (timed into `timing`): its metrics. The loop syncs after."""
        ...

    def evaluate(self, runtime: Runtime, tag: str) -> dict[str, float]:
        """Held-out metrics of the current weights (the rollout engine is synced)."""
        ...

    def step_metrics(self, timing: dict[str, float], step_time: float) -> dict[str, float]:
        """Throughput and timings of the step just run (`timing_s/step` = `step_time`)."""
        ...

    def state_dict(self) -> dict:
        """What a checkpoint needs besides the learner (data position, algorithm state)."""
        ...

    def load_state_dict(self, state: dict) -> None: ...

    def summary_line(self, step: int, total: int, metrics: dict[str, float]) -> str: ...

    def eval_line(self, after: bool, metrics: dict[str, float]) -> str:
        """The console line of the evaluation before (`after` False) or after training."""
        ...


class RLSteps:
    """The RL kind: generate and score (`generate_and_score`), then the learner stages (`learn`)."""

    def __init__(self, cfg: RecipeConfig, tokenizer, rewards: RewardManager, algorithm: Algorithm):
        self.cfg, self.tokenizer, self.rewards, self.algorithm = cfg, tokenizer, rewards, algorithm
        _, self.train_data, self.eval_data, self.sampler = load_run_data(cfg, tokenizer)
        self.label = "train"
        self._batch: RolloutBatch | None = None

    def describe(self) -> str:
        return f"{len(self.train_data)} train / {len(self.eval_data)} eval prompts"

    def run_step(self, step: int, runtime: Runtime, timing: dict[str, float]) -> dict[str, float]:
        batch, metrics = generate_and_score(self.cfg, step, runtime.engine, self.sampler, self.train_data,
                                            self.tokenizer, self.rewards, timing)
        runtime.before_learn()
        metrics.update(learn(batch, runtime.learner, self.algorithm, timing, runtime.critic))
        self._batch = batch
        return metrics

    def evaluate(self, runtime: Runtime, tag: str) -> dict[str, float]:
        t0 = time.perf_counter()
        m = evaluate_task(self.cfg, runtime.engine, self.eval_data, self.rewards, self.tokenizer, tag)
        m["timing_s/testing"] = time.perf_counter() - t0
        return m

    def step_metrics(self, timing: dict[str, float], step_time: float) -> dict[str, float]:
        return perf_metrics(self._batch, timing, step_time)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "algorithm": self.algorithm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.algorithm.load_state_dict(state["algorithm"])

    def summary_line(self, step: int, total: int, metrics: dict[str, float]) -> str:
        return summary_line(step, total, metrics)

    def sample_rows(self, k: int) -> list[dict]:
        """The first `k` rows of the last step's batch for the samples table (creditrl/trainer/samples.py)."""
        from creditrl.trainer.samples import sample_rows

        return sample_rows(self._batch, self.tokenizer, [r.name for r in self.rewards.rewards], k)

    def eval_line(self, after: bool, metrics: dict[str, float]) -> str:
        return _eval_line("after RL " if after else "before RL", metrics)


def make_steps(cfg: RecipeConfig, tokenizer, rewards: RewardManager, algorithm: Algorithm) -> StepKind:
    """The kind of run a recipe is: preference training with a `preference:` section, RL otherwise."""
    if cfg.preference is not None:
        return PreferenceSteps(cfg, tokenizer, rewards)
    return RLSteps(cfg, tokenizer, rewards, algorithm)


def _final_key(key: str) -> str:
    """`eval/accuracy` -> `final/accuracy`; other groups keep theirs (`timing_s/testing` -> `timing_s/final_testing`)."""
    group, name = key.split("/", 1)
    return f"final/{name}" if group == "eval" else f"{group}/final_{name}"


def finish_run(run_dir: Path, total: int, eval_before: dict[str, float], kind: StepKind, runtime: Runtime,
               writer: MetricsWriter, console, history: list[dict]) -> TrainResult:
    """The end-of-run held-out evaluation, written as `final/*` metrics and printed beside the one before."""
    eval_after = kind.evaluate(runtime, "eval/final")
    writer.write(total, {_final_key(k): v for k, v in eval_after.items()})
    writer.close()
    console.print(kind.eval_line(False, eval_before))
    console.print(kind.eval_line(True, eval_after))
    return TrainResult(run_dir, total, eval_before, eval_after, history)


def train(cfg: RecipeConfig, console=None,
          on_step_start: Callable[[int, object], None] | None = None) -> TrainResult:
    """Run a recipe end to end (RL, or preference training with a `preference:` section) on its backend
    (`resources.backend`); the run directory and evaluations.

    on_step_start: test hook, called with (step, rollout engine) at the start of each step.
    """
    from creditrl.trainer.progress import make_console

    console = console or make_console()
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = dump_yaml(cfg)
    (run_dir / "config.yaml").write_text(config_yaml)
    seed_everything(cfg.seed)

    tokenizer = load_tokenizer(cfg.model.path)
    algorithm = Algorithm(cfg.algorithm)
    rewards = RewardManager.from_config(cfg.reward)
    runtime = None
    try:
        kind = make_steps(cfg, tokenizer, rewards, algorithm)
        runtime = make_runtime(cfg, algorithm, count_optimizer_steps(cfg), tokenizer.pad_token_id,
                               tokenizer.eos_token_id)
        log.info("run %s (%s backend, %s rollout): %s", run_dir, cfg.resources.backend, cfg.rollout.engine,
                 kind.describe())
        return _run(cfg, console, run_dir, config_yaml, runtime, kind, tokenizer, on_step_start)
    finally:
        rewards.close()
        if runtime is not None:
            runtime.shutdown()


def _run(cfg: RecipeConfig, console, run_dir: Path, config_yaml: str, runtime: Runtime, kind: StepKind, tokenizer,
         on_step_start) -> TrainResult:
    learner = runtime.learner
    start_step = 0
    eval_before: dict[str, float] = {}
    resume_from = ckpt.resolve_resume(cfg.checkpoint.resume, run_dir)
    if resume_from is not None:
        state = ckpt.restore(resume_from, learner, runtime.critic)
        kind.load_state_dict(state)
        start_step, eval_before = state["step"], state.get("eval_before", {})
        console.print(f"[bold]resumed[/] from {resume_from} at step {start_step}")
    runtime.sync(start_step)  # the rollout engines start from the learner's weights (fresh, LoRA init or resumed)
    writer = MetricsWriter.from_config(run_dir, cfg, resume_step=start_step if resume_from else None)

    if resume_from is None:
        eval_before = kind.evaluate(runtime, "eval/step0")
        writer.write(0, eval_before)
        console.print(kind.eval_line(False, eval_before))

    history = []
    total = cfg.train.steps
    with StepProgress(console, total, start_step, enabled=cfg.logging.progress, label=kind.label) as progress:
        for step in range(start_step + 1, total + 1):
            t_step = time.perf_counter()
            timing: dict[str, float] = {}
            if on_step_start is not None:
                on_step_start(step, runtime.engine)
            try:
                metrics = kind.run_step(step, runtime, timing)
            except TrainingStopped as err:  # before any sync, evaluation or checkpoint of the broken weights
                writer.write(step, err.metrics)  # what the learner counted in this step (skips, param_max_abs)
                writer.close()
                raise stopped_at(err, step, ckpt.latest_checkpoint(run_dir)) from None

            t0 = time.perf_counter()
            metrics.update(runtime.sync(step))
            timing["update_weights"] = time.perf_counter() - t0

            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step != total:
                metrics.update(kind.evaluate(runtime, f"eval/step{step}"))
            metrics.update(kind.step_metrics(timing, time.perf_counter() - t_step))
            metrics.update(runtime.step_metrics())

            if step == total or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0):
                state = {**kind.state_dict(), "eval_before": eval_before}
                metrics["timing_s/save_checkpoint"] = save_step(run_dir, step, learner, tokenizer, state,
                                                                config_yaml, cfg, runtime.critic)
            writer.write(step, metrics)
            if cfg.logging.samples_every and step % cfg.logging.samples_every == 0 and hasattr(kind, "sample_rows"):
                writer.write_samples(step, kind.sample_rows(cfg.logging.samples_per_step))
            history.append({"step": step, **metrics})
            progress.advance(kind.summary_line(step, total, metrics))

    return finish_run(run_dir, total, eval_before, kind, runtime, writer, console, history)


def _adv_inputs(batch: RolloutBatch):
    from creditrl.algorithms.base import AdvantageInputs

    return AdvantageInputs(rewards=batch.rewards, group_ids=batch.group_ids, mask=batch.mask,
                           prompt_keys=batch.prompt_keys, old_logprobs=batch.stats.get("old_logprobs"),
                           old_entropy=batch.stats.get("old_entropy"), reward_components=batch.reward_components,
                           reward_weights=batch.reward_weights, values=batch.stats.get("old_values"))


def _eval_line(label: str, m: dict[str, float]) -> str:
    parts = [f"[bold]{label}[/]: held-out greedy accuracy {100 * m.get('eval/greedy_acc', float('nan')):.1f}%"]
    for k, v in m.items():
        if k.startswith("eval/pass@"):
            parts.append(f"{k.split('/')[1]} {100 * v:.1f}%")
    return ", ".join(parts)
