"""Every token-level credit-assignment recipe trains end to end on the tiny task without NaNs and logs its metrics."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from creditrl.cli import app
from tests.conftest import read_jsonl

RECIPES = {
    "tiny_steer": ["steer/weight_mean", "steer/omega_abs_max"],
    "tiny_high_entropy": ["entropy_mask/kept_frac", "agg/kept_token_frac"],
    "tiny_hapo": ["hapo/clip_high_mean", "hapo/adv_weight_mean", "adv/hapo_fallback_frac"],
    "tiny_lp_reg": ["lp_reg/coverage", "lp_reg/gate_open", "lp_reg/filtered_frac"],
    "tiny_nthr": ["nthr/selected_frac", "nthr/tau_mean"],
    "tiny_thr": ["thr/value_mean", "thr/dominant_frac", "thr/weight_mean"],
    "tiny_thr_explore": ["thr/value_mean", "thr/weight_mean"],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_without_nans(recipe, tiny_task, tmp_path):
    run = tmp_path / recipe
    result = CliRunner().invoke(app, ["train", recipe, *tiny_task.overrides(run, "train.steps=2", "eval.pass_k=0",
                                                                           "eval.max_prompts=10")])
    assert result.exit_code == 0, result.output
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if "actor/pg_loss" in r]
    assert len(steps) == 2
    for row in steps:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        for key in RECIPES[recipe]:
            assert key in row, key
        assert row["actor/skipped_steps_total"] == 0.0
