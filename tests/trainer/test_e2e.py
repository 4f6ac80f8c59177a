"""End-to-end runs of the default recipe on the tiny task (short versions; `slow` ones are longer)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from creditrl.cli import app
from tests.conftest import read_jsonl

runner = CliRunner()


def train_cli(*args: str):
    result = runner.invoke(app, ["train", "tiny_grpo", *args])
    assert result.exit_code == 0, result.output
    return result


def test_short_run_reward_rises(tiny_task, tmp_path):
    """GRPO on the warm-started tiny model: train reward and held-out greedy accuracy go up."""
    run = tmp_path / "run"
    result = train_cli(*tiny_task.overrides(run, "train.steps=40", "train.lr=3e-4", "eval.pass_k=4",
                                            "eval.max_prompts=100"))
    assert "before RL" in result.output and "after RL" in result.output
    rows = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    first = sum(r["reward/mean"] for r in steps[:10]) / 10
    last = sum(r["reward/mean"] for r in steps[-10:]) / 10
    assert last > first + 0.05, (first, last)
    before = rows[0]["eval/greedy_acc"]
    after = next(r for r in rows if "final/greedy_acc" in r)["final/greedy_acc"]
    assert after > before + 0.05, (before, after)
    for key in ("actor/entropy", "pg_clipfrac", "ppo_kl", "actor/grad_norm", "perf/tokens_per_s",
                "timing_s/gen", "timing_s/update_actor", "mismatch/logprob_abs_diff_mean", "response/length_mean"):
        assert key in steps[-1], key
    # single mini-batch, one epoch: the on-policy ratio is exactly 1 (same micro-batches in both passes)
    assert all(r["ppo_kl"] == 0.0 and r["pg_clipfrac"] == 0.0 for r in steps)
    assert steps[0]["mismatch/logprob_abs_diff_mean"] < 1e-4
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "model" / "config.json").is_file() and (ckpt / "config.yaml").is_file()


def _final_weights(run):
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(ckpt / "model" / "model.safetensors"))


@pytest.mark.parametrize("batch_prompts, stop_at", [(24, 1), (32, 2)], ids=["mid-epoch", "epoch-boundary"])
def test_resume_matches_uninterrupted(tiny_task, tmp_path, batch_prompts, stop_at):
    """A run interrupted after `stop_at` steps and resumed ends with bit-identical weights and metrics."""
    common = [f"data.train_files=[{tiny_task.small_train_file}]", f"train.global_batch_prompts={batch_prompts}",
              "train.mini_batch_prompts=8", "train.ppo_epochs=2", "checkpoint.every_steps=1", "eval.max_prompts=40",
              "eval.pass_k=2", "train.warmup_steps=0"]
    full, part = tmp_path / "full", tmp_path / "part"
    train_cli(*tiny_task.overrides(full, *common, "train.steps=4"))
    train_cli(*tiny_task.overrides(part, *common, f"train.steps={stop_at}"))
    resumed = train_cli(*tiny_task.overrides(part, *common, "train.steps=4"), "--resume")
    assert "resumed from" in resumed.output
    a, b = _final_weights(full), _final_weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = {r["step"]: r for r in read_jsonl(full / "metrics.jsonl") if "reward/mean" in r}
    rb = {r["step"]: r for r in read_jsonl(part / "metrics.jsonl") if "reward/mean" in r}
    assert sorted(rb) == [1, 2, 3, 4]  # records after the checkpoint were not duplicated
    for step in range(1, 5):
        for key in ("reward/mean", "actor/pg_loss", "actor/grad_norm", "response/length_mean"):
            assert ra[step][key] == rb[step][key], (step, key)
    fa = [r for r in read_jsonl(full / "metrics.jsonl") if "final/greedy_acc" in r]
    fb = [r for r in read_jsonl(part / "metrics.jsonl") if "final/greedy_acc" in r]
    assert len(fb) == 1  # the interrupted run's end-of-run evaluation was dropped on resume
    assert fa[0]["final/greedy_acc"] == fb[0]["final/greedy_acc"] and fa[0]["step"] == fb[0]["step"] == 4


@pytest.mark.slow
def test_default_recipe_full_length(tiny_task, tmp_path):
    """The full default recipe (100 steps): +15 points of held-out greedy accuracy."""
    run = tmp_path / "run"
    train_cli(*tiny_task.overrides(run))
    rows = read_jsonl(run / "metrics.jsonl")
    before = rows[0]["eval/greedy_acc"]
    after = next(r for r in rows if "final/greedy_acc" in r)["final/greedy_acc"]
    assert after >= before + 0.15, (before, after)


def test_lora_gradient_checkpointing_bf16_and_kl(tiny_task, tmp_path):
    """The optional learner features run together: LoRA (reference = adapter disabled), gradient
    checkpointing, bf16 autocast, KL loss and an entropy bonus; the checkpoint holds the adapter and evaluates."""
    run = tmp_path / "lora"
    train_cli(*tiny_task.overrides(run, "train.steps=3", "model.lora.enabled=true", "model.lora.r=4",
                                   "model.gradient_checkpointing=true", "model.autocast_bf16=true",
                                   "algorithm.kl.coef=0.01", "algorithm.regularizers=[{name: entropy_bonus, coef: 0.01}]",
                                   "eval.max_prompts=20", "eval.pass_k=0", "train.lr=1e-3"))
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "reward/mean" in r]
    assert len(rows) == 3
    for r in rows:
        assert all(v == v for v in r.values())  # no NaN
        assert "actor/kl_loss" in r and "actor/entropy_bonus" in r
    assert rows[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any update
    assert rows[-1]["actor/kl_loss"] > 0.0
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "model" / "adapter_config.json").is_file()
    result = runner.invoke(app, ["eval", str(run), f"model.path={tiny_task.sft}", "eval.max_prompts=10",
                                 "eval.pass_k=0", f"data.train_files=[{tiny_task.train_file}]",
                                 f"data.eval_files=[{tiny_task.eval_file}]"])
    assert result.exit_code == 0, result.output
    assert "eval/greedy_acc" in result.output
