"""`creditrl export` and checkpoint loading from any directory (issue 13): a LoRA run started with a relative
model.path is evaluated and exported from another directory; the exported plain model gives the trained policy's
log-probs."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from creditrl.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def lora_run(tiny_task, tmp_path_factory):
    """A 1-step LoRA run of tiny_grpo whose model.path is relative to the directory it was started in."""
    import os

    start = tmp_path_factory.mktemp("start")
    shutil.copytree(tiny_task.sft, start / "sft")
    run = start / "run"
    cwd = os.getcwd()
    os.chdir(start)
    try:
        result = runner.invoke(app, ["train", "tiny_grpo", *tiny_task.overrides(
            run, "model.path=sft", "model.lora.enabled=true", "train.lr=1e-2", "train.steps=1",
            "checkpoint.every_steps=1", "eval.max_prompts=8", "eval.pass_k=0")])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return start, run


def _logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]


def test_export_of_a_lora_run_from_another_directory_matches_the_trained_policy(lora_run, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from creditrl.trainer.export import load_checkpoint

    start, run = lora_run
    monkeypatch.chdir(tmp_path)  # model.path=sft does not exist from here
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # plain transformers, no peft, no creditrl
    _, _, policy = load_checkpoint(run)
    base = AutoModelForCausalLM.from_pretrained(str(start / "sft")).eval()
    ids = torch.randint(3, plain.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    lp_plain, lp_policy, lp_base = _logprobs(plain, ids), _logprobs(policy, ids), _logprobs(base, ids)
    # tolerance: float32 W + (alpha/r) B A merged vs the adapter's separate matmuls; measured max 1.9e-5 here
    # (log-probs of random tokens, down to -14, i.e. ~1e-6 relative)
    gap, trained = (lp_plain - lp_policy).abs().max().item(), (lp_plain - lp_base).abs().max().item()
    assert gap < 1e-4, gap
    assert trained > 100 * gap, (trained, gap)  # the adapter trained: the export is not the base model
    # evaluation of the same run works from here too
    result = runner.invoke(app, ["eval", str(run), "eval.max_prompts=4", "eval.pass_k=0"])
    assert result.exit_code == 0, result.output


def test_export_errors_are_clean(lora_run, tmp_path):
    _, run = lora_run
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(run), "--out", str(taken)])
    assert result.exit_code == 2 and "--force" in result.output and "Traceback" not in result.output
    assert (taken / "keep.txt").read_text() == "mine"  # nothing lost
    result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "nowhere" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
