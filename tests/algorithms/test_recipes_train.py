"""Every RL recipe in creditrl/recipes trains one step on the tiny task: finite metrics, no skipped step.

The short version runs by default (one step each); `test_token_level_recipes.py` (slow) runs two steps and checks
each part's own metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from creditrl.cli import app
from creditrl.config.loader import RECIPES_DIR
from tests.conftest import read_jsonl


def rl_recipes() -> list[str]:
    out = []
    for p in sorted(Path(RECIPES_DIR).glob("tiny_*.yaml")):
        data = yaml.safe_load(p.read_text()) or {}
        if "preference" in data or "resources" in data:
            continue  # preference recipes and Ray recipes have their own tests
        out.append(p.stem)
    return out


@pytest.mark.parametrize("recipe", rl_recipes())
def test_recipe_one_step(recipe, tiny_task, tmp_path):
    run = tmp_path / recipe
    critic = "critic" in (yaml.safe_load((Path(RECIPES_DIR) / f"{recipe}.yaml").read_text()) or {})
    result = CliRunner().invoke(app, ["train", recipe, *tiny_task.overrides(
        run, "train.steps=1", "eval.pass_k=0", "eval.max_prompts=8", "train.global_batch_prompts=8",
        "reward.executor=serial", *(["critic.warmup_steps=0"] if critic else []))])  # one step: update the policy
    assert result.exit_code == 0, result.output
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if "actor/pg_loss" in r]
    assert len(steps) == 1
    row = steps[0]
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert row["actor/skipped_steps_total"] == 0.0
    assert row["actor/grad_norm"] > 0.0 or row.get("adv/zero_std_frac", 0.0) == 1.0
