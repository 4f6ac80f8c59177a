"""The controller: the step loop of `creditrl/trainer/loop.py`, driving Ray worker groups.

The driver process owns the loop, the data sampler, the reward manager and the algorithm (advantages), as in
the single-process trainer; generation runs in the rollout group and the old-stats pass and the update run in
the DeepSpeed learner group. The stages and metric names are the single-process ones, plus:

    sync   after every update (and once at start, also after resume, before the first generation)
    perf/rollout_tokens_per_s, perf/learner_tokens_per_s, rollout/actor_restarts, weight_sync/buckets

A recipe switches to this path with `resources.backend: ray`; nothing else in it changes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from creditrl.algorithms import Algorithm
from creditrl.config import RecipeConfig, dump_yaml
from creditrl.distributed.learner_group import LearnerGroup
from creditrl.distributed.placement import make_placement
from creditrl.distributed.ray_runtime import init_ray
from creditrl.distributed.rollout_group import RolloutGroup
from creditrl.distributed.weight_sync import WeightSync, make_weight_sync
from creditrl.rewards import RewardManager
from creditrl.trainer import checkpoint as ckpt
from creditrl.learner.local import count_optimizer_steps
from creditrl.trainer.loop import (TrainResult, _eval_line, finish_run, generate_and_score, held_out_evaluator,
                                   learn, load_run_data, perf_metrics, save_step, seed_everything)
from creditrl.trainer.metrics import MetricsWriter, summary_line
from creditrl.trainer.progress import StepProgress

log = logging.getLogger(__name__)


def train_distributed(cfg: RecipeConfig, console=None,
                      on_step_start: Callable[[int, RolloutGroup], None] | None = None) -> TrainResult:
    """Run a recipe on Ray worker groups; same result type as `creditrl.trainer.loop.train`.

    on_step_start: test hook, called with (step, rollout group) before each step's generation.
    """
    import ray

    from creditrl.trainer.progress import make_console

    console = console or make_console()
    rc = cfg.resources
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = dump_yaml(cfg)
    (run_dir / "config.yaml").write_text(config_yaml)
    seed_everything(cfg.seed)
    started_here = not ray.is_initialized()
    init_ray(rc.ray_address)

    tokenizer, train_data, eval_data, sampler = load_run_data(cfg)
    algorithm = Algorithm(cfg.algorithm)
    rewards = RewardManager.from_config(cfg.reward)
    placement = make_placement(rc, rc.call_timeout_s)
    learner = rollout = None
    try:
        learner = LearnerGroup(cfg, count_optimizer_steps(cfg), tokenizer.pad_token_id, placement.learner)
        rollout = RolloutGroup(cfg, placement.rollout, tokenizer.pad_token_id, tokenizer.eos_token_id)
        sync = make_weight_sync(cfg, learner, rollout)
        log.info("weight sync: %s", sync.name)
        return _run(cfg, console, run_dir, config_yaml, tokenizer, train_data, eval_data, sampler, algorithm,
                    rewards, learner, rollout, sync, on_step_start)
    finally:
        rewards.close()
        for group in (rollout, learner):
            if group is not None:
                group.shutdown()
        placement.remove()
        if started_here:
            ray.shutdown()


def _run(cfg, console, run_dir, config_yaml, tokenizer, train_data, eval_data, sampler, algorithm, rewards,
         learner: LearnerGroup, rollout: RolloutGroup, sync: WeightSync, on_step_start) -> TrainResult:
    start_step = 0
    eval_before: dict[str, float] = {}
    resume_from = ckpt.resolve_resume(cfg.checkpoint.resume, run_dir)
    if resume_from is not None:
        start_step, eval_before = ckpt.restore(resume_from, learner, sampler, algorithm)
        console.print(f"[bold]resumed[/] from {resume_from} at step {start_step}")
    sync.push(start_step)  # the rollout actors start from the learner's weights (fresh LoRA init or resumed)
    writer = MetricsWriter(run_dir, cfg.logging.tensorboard, resume_step=start_step if resume_from else None)

    run_eval = held_out_evaluator(cfg, rollout, eval_data, rewards, tokenizer)

    if resume_from is None:
        eval_before = run_eval("eval/step0")
        writer.write(0, eval_before)
        console.print(_eval_line("before RL", eval_before))

    history = []
    total = cfg.train.steps
    sleep_between = cfg.resources.use_gpu and cfg.resources.placement == "colocated"
    with StepProgress(console, total, start_step, enabled=cfg.logging.progress) as progress:
        for step in range(start_step + 1, total + 1):
            t_step = time.perf_counter()
            timing: dict[str, float] = {}
            if on_step_start is not None:
                on_step_start(step, rollout)
            restarts_before = rollout.restarts
            batch, metrics = generate_and_score(cfg, step, rollout, sampler, train_data, tokenizer, rewards, timing)
            if sleep_between:  # colocated GPU: the learner gets the memory (architecture.md §2.8)
                rollout.sleep()

            metrics.update(learn(batch, learner, algorithm, timing))

            t0 = time.perf_counter()
            if sleep_between:
                rollout.wake_up(["weights"])
            metrics["weight_sync/buckets"] = float(sync.push(step))
            if sleep_between:
                rollout.wake_up(["kv_cache"])
            timing["update_weights"] = time.perf_counter() - t0

            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step != total:
                metrics.update(run_eval(f"eval/step{step}"))
            metrics.update(perf_metrics(batch, timing, time.perf_counter() - t_step))
            metrics["rollout/actor_restarts"] = float(rollout.restarts - restarts_before)

            if step == total or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0):
                metrics["timing_s/save_checkpoint"] = save_step(run_dir, step, learner, tokenizer, sampler,
                                                                algorithm, eval_before, config_yaml, cfg)
            writer.write(step, metrics)
            history.append({"step": step, **metrics})
            progress.advance(summary_line(step, total, metrics))

    return finish_run(run_dir, total, eval_before, run_eval, writer, console, history)
