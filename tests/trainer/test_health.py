"""Training health (creditrl/learner/health.py): a diverging model stops the run before anything is written from
it, the last good checkpoint stays intact, skipped steps are counted and budgeted, NaN rewards are failures."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from creditrl.learner import health
from creditrl.learner.health import TooManySkippedSteps, TrainingDiverged
from tests.conftest import read_jsonl

FAULT_FNS = str(Path(__file__).parents[1] / "rewards" / "fault_fns.py")
RUN = ("train.global_batch_prompts=8", "eval.max_prompts=16", "eval.pass_k=0")


# ---- units ---------------------------------------------------------------------------------------------------
def test_max_abs_and_limits():
    a, b = torch.tensor([[1.0, -3.0]]), torch.tensor([2.0], dtype=torch.bfloat16)
    assert health.max_abs([a, b, torch.empty(0)]) == 3.0
    assert health.max_abs([]) == 0.0
    assert health.max_abs([a, torch.tensor([math.nan])]) == math.inf
    assert health.max_abs([torch.tensor([-math.inf])]) == math.inf
    assert health.param_limit(0.5, 1e4) == 1e4
    assert health.param_limit(5e3, 1e4) == 5e4  # never below 10x the initial weights
    assert health.param_limit(5e3, None) == math.inf
    assert health.check_params(2.0, 1e4, 1e-4) is None
    stop = health.check_params(2e30, 1e4, 1e30)
    assert stop.kind == "diverged" and "2e+30" in stop.message and "lower train.lr" in stop.message
    assert "non-finite" in health.check_params(math.inf, math.inf, 1e-3).message
    assert health.check_skips(9, 10) is None and health.check_skips(1000, None) is None
    assert health.check_skips(10, 10).kind == "skips"
    err = health.Stop("skips", "m").error({"x": 1.0})
    assert isinstance(err, TooManySkippedSteps) and err.metrics == {"x": 1.0}


def test_config_fields_are_checked():
    from creditrl.config import load_config

    cfg = load_config("tiny_grpo", [])
    assert cfg.train.max_consecutive_skipped_steps == 10 and cfg.train.max_param_abs == 1e4
    for bad in ("train.max_consecutive_skipped_steps=0", "train.max_param_abs=-1"):
        with pytest.raises(Exception, match=bad.split("=")[0]):
            load_config("tiny_grpo", [bad])
    assert load_config("tiny_grpo", ["train.max_param_abs=null"]).train.max_param_abs is None


# ---- the local learner ---------------------------------------------------------------------------------------
def _learner(tiny_task, *overrides):
    from creditrl.algorithms import Algorithm
    from creditrl.config import load_config
    from creditrl.learner.batch import RolloutBatch
    from creditrl.learner.local import LocalLearner

    cfg = load_config("tiny_grpo", [f"model.path={tiny_task.sft}", *overrides])
    algo = Algorithm(cfg.algorithm)
    learner = LocalLearner(cfg, algo, total_optimizer_steps=10, pad_id=0)
    resp = torch.tensor([[5, 6, 2], [7, 2, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    batch = RolloutBatch([[5, 14, 6, 18], [7, 14, 8, 18]], resp, mask, torch.zeros(2, 3), torch.tensor([1.0, 0.0]),
                         torch.tensor([0, 0]), ["a", "a"], torch.ones(2, dtype=torch.bool))
    learner.compute_old_stats(batch, algo)
    return learner, algo, batch, mask


def test_non_finite_loss_skips_the_step(tiny_task):
    learner, algo, batch, mask = _learner(tiny_task)
    batch.advantages = torch.tensor([[float("nan")] * 3, [1.0] * 3]) * mask
    before = [p.detach().clone() for p in learner.params]
    metrics = learner.update(batch, algo)
    assert metrics["actor/skipped_steps_total"] == 1.0
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, learner.params))
    batch.advantages = torch.tensor([[1.0] * 3, [-1.0] * 3]) * mask
    learner.update(batch, algo)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, learner.params))


def test_local_learner_stops_on_exploded_parameters(tiny_task):
    learner, algo, batch, mask = _learner(tiny_task, "train.lr=1e30")
    batch.advantages = torch.tensor([[1.0] * 3, [-1.0] * 3]) * mask
    with pytest.raises(TrainingDiverged, match=r"above the limit 1e\+04.*lower train.lr") as info:
        learner.update(batch, algo)
    assert info.value.metrics["actor/param_max_abs"] > 1e20
    assert info.value.metrics["actor/skipped_steps_total"] == 0.0


def test_healthy_update_reports_the_parameter_magnitude(tiny_task):
    learner, algo, batch, mask = _learner(tiny_task, "train.lr=1e-4")
    batch.advantages = torch.tensor([[1.0] * 3, [-1.0] * 3]) * mask
    m = learner.update(batch, algo)
    assert 0 < m["actor/param_max_abs"] < 100 and m["actor/skipped_steps_consecutive"] == 0.0


def test_skip_budget_counts_consecutive_skips(tiny_task):
    learner, algo, batch, mask = _learner(tiny_task, "train.max_consecutive_skipped_steps=3")
    nan = torch.tensor([[math.nan] * 3, [1.0] * 3]) * mask
    good = torch.tensor([[1.0] * 3, [-1.0] * 3]) * mask
    for advantages, total, in_a_row in ((nan, 1, 1), (nan, 2, 2), (good, 2, 0), (nan, 3, 1), (nan, 4, 2)):
        batch.advantages = advantages
        m = learner.update(batch, algo)
        assert (m["actor/skipped_steps_total"], m["actor/skipped_steps_consecutive"]) == (total, in_a_row)
    batch.advantages = nan
    with pytest.raises(TooManySkippedSteps, match="3 optimizer steps in a row") as info:
        learner.update(batch, algo)
    assert info.value.metrics["actor/skipped_steps_total"] == 5.0


# ---- whole runs ----------------------------------------------------------------------------------------------
def _snapshot(run: Path) -> dict[str, str]:
    root = run / "checkpoints"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _train(tiny_task, run: Path, *extra: str, on_step_start=None):
    from creditrl.config import load_config
    from creditrl.trainer.loop import train

    return train(load_config("tiny_grpo", tiny_task.overrides(run, *RUN, *extra)), on_step_start=on_step_start)


def test_diverging_rerun_leaves_the_good_checkpoints_untouched(tiny_task, tmp_path):
    """`train.lr=1e30` in a run directory that holds a good run's checkpoints: the run stops at step 1 with a
    named error, writes no checkpoint, and the old checkpoints and `latest` are byte-identical."""
    run = tmp_path / "run"
    _train(tiny_task, run, "train.steps=2", "checkpoint.every_steps=1")
    before = _snapshot(run)
    assert "latest" in before and any(k.startswith("step_000002/") for k in before)
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 1: the model diverged") as info:
        _train(tiny_task, run, "train.steps=2", "checkpoint.every_steps=1", "train.lr=1e30")
    assert "step_000002" in str(info.value)  # the checkpoint to go back to
    assert _snapshot(run) == before
    last = read_jsonl(run / "metrics.jsonl")[-1]
    assert last["step"] == 1 and last["actor/param_max_abs"] > 1e20


def test_divergence_mid_run_keeps_the_last_good_checkpoint(tiny_task, tmp_path, monkeypatch):
    """The learning rate jumps to 1e30 at step 3 of a run that checkpoints every step: steps 1-2 are saved,
    the run stops at step 3 and no step-3 checkpoint (nor a partial one) exists; step 2's weights are sane."""
    import creditrl.trainer.loop as loop

    held = {}
    make_runtime = loop.make_runtime

    def capture(*args, **kwargs):
        held["runtime"] = make_runtime(*args, **kwargs)
        return held["runtime"]

    def blow_up(step, engine):
        if step == 3:
            learner = held["runtime"].learner
            learner.scheduler.base_lrs = [1e30 for _ in learner.scheduler.base_lrs]
            for group in learner.optimizer.param_groups:
                group["lr"] = 1e30

    monkeypatch.setattr(loop, "make_runtime", capture)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="training stopped at step 3"):
        _train(tiny_task, run, "train.steps=4", "checkpoint.every_steps=1", "checkpoint.keep=5",
               on_step_start=blow_up)
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001", "step_000002"]
    assert (root / "latest").read_text().strip() == "step_000002"
    weights = load_file(str(root / "step_000002" / "model" / "model.safetensors"))
    assert max(t.abs().max().item() for t in weights.values()) < 100
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if r["step"] == 3]
    assert steps and steps[-1]["actor/param_max_abs"] > 1e20


def test_nan_reward_is_a_counted_failure_and_the_run_trains(tiny_task, tmp_path):
    """A reward that returns NaN for every sample: each call is a failure counted per function, `reward/mean`
    stays finite and no optimizer step is skipped."""
    from creditrl.config import load_config
    from creditrl.registry import PartSpec
    from creditrl.rewards.custom import CustomRewardConfig
    from creditrl.trainer.loop import train

    cfg = load_config("tiny_grpo", tiny_task.overrides(tmp_path / "run", *RUN, "train.steps=2"))
    cfg.reward.fns = [cfg.reward.fns[0], PartSpec("custom", CustomRewardConfig(f"{FAULT_FNS}:always_nan"), 1.0)]
    result = train(cfg)
    n = cfg.train.global_batch_prompts * cfg.rollout.n_samples
    for row in result.history:
        assert math.isfinite(row["reward/mean"])
        assert row["reward/failures/custom"] == n and row["reward/nonfinite/custom"] == n
        assert row["actor/skipped_steps_total"] == 0.0


def test_cli_prints_the_divergence_without_a_traceback(tiny_task, tmp_path):
    from creditrl.cli import app

    result = CliRunner().invoke(app, ["train", "tiny_grpo",
                                      *tiny_task.overrides(tmp_path / "run", *RUN, "train.steps=1", "train.lr=1e30")])
    assert result.exit_code == 2, result.output
    assert "the model diverged" in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
