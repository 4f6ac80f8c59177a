"""`creditrl list` and the generated recipe reference docs/configuration.md (creditrl/catalog.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from creditrl import catalog
from creditrl.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich tables wrap at the terminal width; wide enough to keep "name: type = default"
REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_reference_is_up_to_date():
    expected = catalog.reference_markdown()
    assert REFERENCE.read_text() == expected, (
        f"docs/configuration.md is out of date with the schema and the registered parts. Regenerate it: "
        f"{catalog.REGENERATE}")


def test_every_key_is_in_the_reference_with_type_and_default():
    keys = {o.name: o for o in catalog.recipe_keys()}
    for key in ("name", "train.steps", "rollout.vllm.max_num_seqs", "algorithm.kl.coef", "reward.timeout_s",
                "resources.weight_sync", "preference.beta", "model.lora.r"):
        assert key in keys, key
    assert keys["train.steps"].type == "int" and keys["train.steps"].default == "100"
    assert keys["rollout.engine"].type == '"hf" | "vllm"'
    assert keys["rollout.n_samples"].doc.startswith("responses per prompt")
    assert keys["train.mini_batch_prompts"].default == "null"
    assert keys["algorithm.policy_loss"].default == "ppo_clip"
    assert keys["preference"].default == "null"
    # a comment on the lines above a field counts as its description
    assert keys["rollout.vllm.kv_cache_memory_bytes"].doc.startswith("KV cache size")
    text = REFERENCE.read_text()
    assert "| `train.lr` | `float` | `0.0001` |" in text
    assert "| `rollout.engine` | `\"hf\" \\| \"vllm\"` | `hf` |" in text


def test_field_docs_trailing_and_leading_comments():
    from dataclasses import dataclass

    @dataclass
    class Example:
        a: int = 1  # trailing
        # leading line one
        # leading line two
        b: str = "x"
        c: float = 0.5

    assert catalog.field_docs(Example) == {"a": "trailing", "b": "leading line one leading line two"}


@pytest.mark.parametrize("target, names", [
    ("parts", ["grpo", "ppo_clip", "steer", "algorithm.token_weights", "clip_high: float = 0.2",
               "dual_clip: float | null = 3.0", "GRPO group-normalised advantage"]),
    ("rewards", ["numeric_answer", "math_answer", "format_tags", "rel_tol"]),
    ("recipes", ["tiny_grpo", "tiny_steer", "The default recipe"]),
    ("keys", ["train.global_batch_prompts", "rollout.n_samples"]),
])
def test_list(target, names):
    result = runner.invoke(app, ["list", target], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in names:
        assert name in result.output, (name, result.output[:2000])


def test_list_all_is_the_default():
    result = runner.invoke(app, ["list"], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in ("grpo", "ppo_clip", "steer", "numeric_answer", "tiny_grpo", "train.steps"):
        assert name in result.output


def test_list_markdown_is_the_reference():
    result = runner.invoke(app, ["list", "keys", "--markdown"])
    assert result.exit_code == 0 and result.stdout == catalog.reference_markdown()


@pytest.mark.parametrize("args", [["list", "bogus"], ["list", "parts", "--markdown"]])
def test_list_errors(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    if args[1] == "bogus":
        text = " ".join(result.output.split())
        assert "'bogus'" in text and "parts, rewards, recipes, keys, all" in text


def test_list_help():
    result = runner.invoke(app, ["list", "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
