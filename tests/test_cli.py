"""CLI behaviour: --help everywhere, config show/validate, and one-paragraph errors without tracebacks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from creditrl.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["train"], ["sft"], ["eval"], ["config"], ["config", "show"],
                                 ["config", "validate"], ["tiny"], ["tiny", "init"]])
def test_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_config_show_and_validate():
    result = runner.invoke(app, ["config", "show", "tiny_grpo", "train.steps=3"])
    assert result.exit_code == 0
    assert "steps: 3" in result.output and "policy_loss" in result.output
    assert len(result.output.splitlines()) < 150
    assert runner.invoke(app, ["config", "validate", "tiny_grpo", "--schema-only"]).exit_code == 0
    # without --schema-only the files are checked too: here (no `creditrl tiny init`) the model is missing
    result = runner.invoke(app, ["config", "validate", "tiny_grpo", "model.path=no/such/model"])
    assert result.exit_code == 2 and "model.path=no/such/model" in " ".join(result.output.split())


def test_error_messages_keep_square_brackets():
    result = runner.invoke(app, ["config", "validate", "tiny_grpo", "train.adam_betas=[1.5,0.9]"])
    assert result.exit_code == 2 and "[1.5, 0.9]" in result.output and "Traceback" not in result.output


def expect_user_error(args, *phrases):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for p in phrases:
        assert p in text, (p, result.output)
    return result


def test_unknown_key_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: tiny_grpo\nrollout:\n  temprature: 0.5\n")
    expect_user_error(["config", "validate", str(recipe)], "rollout.temprature", "rollout.temperature", "r.yaml:3")
    expect_user_error(["train", str(recipe)], "rollout.temprature")


def test_wrong_type_error():
    expect_user_error(["train", "tiny_grpo", "train.steps=ten"], "train.steps", "expected an integer")


def test_missing_data_file_and_field(tiny_task, tmp_path):
    expect_user_error(["train", "tiny_grpo", *tiny_task.overrides(tmp_path / "r", f"data.train_files=[{tmp_path}/x.jsonl]")],
                      "data file not found", "x.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    expect_user_error(["train", "tiny_grpo", *tiny_task.overrides(tmp_path / "r", f"data.train_files=[{bad}]")],
                      "no field 'prompt'", "data.prompt_field")


def test_model_dir_errors(tiny_task, tmp_path):
    empty = tmp_path / "nomodel"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_task.sft / "config.json").read_text())
    for f in tiny_task.sft.glob("tokenizer*"):
        (empty / f.name).write_text(f.read_text())
    expect_user_error(["train", "tiny_grpo", *tiny_task.overrides(tmp_path / "r", f"model.path={empty}")],
                      "no weights", str(empty))
    expect_user_error(["eval", "tiny_grpo", f"model.path={tmp_path / 'missing'}"], "missing")


def test_tiny_init_and_eval_checkpoint(tiny_task, tmp_path):
    result = runner.invoke(app, ["tiny", "init", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0
    assert (tmp_path / "t" / "base" / "model.safetensors").is_file()
    assert (tmp_path / "t" / "data" / "eval.jsonl").is_file()
    result = runner.invoke(app, ["eval", "tiny_grpo", *tiny_task.overrides(tmp_path / "e", "eval.max_prompts=20",
                                                                           "eval.pass_k=2")])
    assert result.exit_code == 0, result.output
    assert "eval/greedy_acc" in result.output and "eval/pass@2" in result.output


def test_tiny_init_countdown_then_the_shipped_recipe(tmp_path, monkeypatch):
    """`creditrl tiny init --task countdown`, then `creditrl sft countdown_grpo` (reads sft.train_files, not the RL
    prompts) and `creditrl train countdown_grpo`, from the directory they were made in (a smaller task for speed)."""
    import json

    from creditrl.data import countdown

    small = countdown.CountdownSpec(n_numbers=3, max_number=9, max_target=40, max_intermediate=60, n_train=8,
                                    n_sft=12, n_eval=6, n_pairs_train=2, n_pairs_eval=2)
    monkeypatch.setattr(countdown, "CountdownSpec", lambda: small)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["tiny", "init", "--task", "countdown"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "countdown" / "base" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "countdown" / "data" / "spec.json").read_text())["n_sft"] == 12
    # data.train_files (the RL prompts) made unreadable: SFT must read sft.train_files, the SFT corpus
    result = runner.invoke(app, ["sft", "countdown_grpo", "sft.steps=2", "sft.batch_size=4", "eval.max_prompts=2",
                                 "data.train_files=[countdown/data/not-there.jsonl]", "logging.progress=false"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "countdown" / "sft" / "model.safetensors").is_file()
    result = runner.invoke(app, ["train", "countdown_grpo", "train.steps=1", "train.global_batch_prompts=2",
                                 "train.mini_batch_prompts=2", "rollout.n_samples=2", "eval.every_steps=0",
                                 "eval.max_prompts=2", "eval.pass_k=0", "output_dir=run", "logging.progress=false"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/countdown" in r for r in rows)
    result = runner.invoke(app, ["tiny", "init", "--task", "sums"])
    assert result.exit_code == 2 and "--task addition or --task countdown" in result.output
