"""A short version of the countdown method bench (issue #16): the task, its verifier, two training steps with the
bench's overrides, the bench's own held-out evaluation, and the CI / verdict / report machinery, so that neither
the task nor the bench can rot. The full table is `python bench/methods.py --task countdown` (docs/methods.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import methods
    finally:
        sys.path.remove(str(BENCH))
    return methods


def test_verifier_hand_made_cases():
    from creditrl.rewards.countdown import check_solution

    nums, target = [3, 7, 12, 15], 36
    assert check_solution("15-12=3;3*7=21;21+15=36", [3, 7, 12, 15, 15], 36)[0]  # a number given twice
    assert check_solution("12*3=36", nums, target) == (True, "")  # correct (a subset of the numbers)
    assert check_solution("7*3=21;21+15=36", nums, target) == (True, "")  # correct, two steps
    assert "not available" in check_solution("9*4=36", nums, target)[1]  # numbers that were not given
    assert "not available" in check_solution("12*3=36;36-3=33", nums, 33)[1]  # 3 reused
    assert "ends at 37" in check_solution("15+12=27;27+7=34;34+3=37", nums, target)[1]  # wrong value
    assert "wrong arithmetic" in check_solution("12*3=35", nums, 35)[1]
    assert "malformed" in check_solution("print(36)", nums, target)[1]  # garbage text, never evaluated
    assert "malformed" in check_solution("12*3=36; DROP", nums, target)[1]
    assert "divides by zero" in check_solution("3-3=0;12/0=0", [3, 3, 12], 0)[1]


def test_bootstrap_and_verdicts_on_hand_computed_rows(bench):
    # method all-correct vs baseline all-wrong on 4 prompts, 2 seeds each: difference 1, every resample 1
    est, lo, hi = bench.bootstrap_diff([[1, 1, 1, 1], [1, 1, 1, 1]], [[0, 0, 0, 0], [0, 0, 0, 0]], n_boot=200)
    assert (est, lo, hi) == (1.0, 1.0, 1.0)
    assert bench.verdict(lo, hi, "higher") == "shown" and bench.verdict(lo, hi, "lower") == "opposite"
    # identical arms: difference exactly 0 in every resample -> not shown
    est, lo, hi = bench.bootstrap_diff([[1, 0, 1, 0]], [[1, 0, 1, 0]], n_boot=200)
    assert (est, lo, hi) == (0.0, 0.0, 0.0) and bench.verdict(lo, hi, "higher") == "not shown"
    # a paired prompt effect: the method is right on prompt 0 only, the baseline never; mean diff 1/4
    est, lo, hi = bench.bootstrap_diff([[1, 0, 0, 0]], [[0, 0, 0, 0]], n_boot=2000, seed=1)
    assert est == pytest.approx(0.25) and lo == 0.0 and hi == pytest.approx(0.75)
    assert bench.verdict(lo, hi, "higher") == "not shown"  # the CI touches 0
    assert bench.verdict(-0.01, 0.03, "noninferior", 0.02) == "shown"
    assert bench.verdict(-0.03, 0.01, "noninferior", 0.02) == "not shown"
    assert bench.verdict(-0.05, -0.01, "noninferior", 0.02) == "opposite"
    assert bench.verdict(-0.02, 0.01, "not higher") == "shown" and bench.verdict(0.01, 0.05, "not higher") == "opposite"
    assert bench.verdict(-0.02, 0.01, "equal") == "holds" and bench.verdict(0.01, 0.05, "equal") == "does not hold"
    held = {"k": 4, "greedy": [1, 0], "correct_of_k": [4, 1], "entropy": [0.5, 1.5], "length": [20, 22]}
    assert bench.per_prompt(held, "pass1") == [1.0, 0.25] and bench.per_prompt(held, "passk") == [1.0, 1.0]
    rows = [{"step": 1, "actor/pg_loss": 0.1, "pg_clipfrac": 0.1, "adv/zero_std_frac": 0.5},
            {"step": 2, "actor/pg_loss": 0.1, "pg_clipfrac": 0.3, "adv/zero_std_frac": 0.5,
             "adv/sas_revisited_frac": 0.5}, {"step": 2, "final/greedy_acc": 0.0}]
    assert bench.per_step(rows, "clipfrac") == [0.1, 0.3]
    assert bench.per_step(rows, "utilisation") == [0.5, 0.75]  # not logged: the pre-registered estimate
    for r, used in zip(rows, (0.5, 0.625)):
        r["adv/nonzero_frac"] = used
    assert bench.per_step(rows, "utilisation") == [0.5, 0.625]  # logged: the measured share
    assert bench.per_step(rows, "utilisation_estimate") == [0.5, 0.75]


def test_two_steps_heldout_and_report(bench, tmp_path):
    """Task + random-init model (as the 'SFT' model), 2 GRPO steps with the bench's overrides, the bench's
    held-out evaluation, then the report with its predictions table (missing methods say 'not run')."""
    from creditrl.config import load_config
    from creditrl.data.countdown import CountdownSpec, write_countdown_task
    from creditrl.models.tiny import build_tiny_model
    from creditrl.trainer.loop import train

    out = tmp_path / "bench"
    task = write_countdown_task(out / "countdown", CountdownSpec(n_numbers=3, max_number=9, max_target=40,
                                max_intermediate=60, n_train=8, n_sft=4, n_eval=6, n_pairs_train=2, n_pairs_eval=2))
    build_tiny_model(task / "sft", seed=0)
    doc = tmp_path / "methods.md"
    doc.write_text("# Predictions\n\nkept\n\n<!-- countdown-results:start -->\nSTALE BLOCK\n<!-- countdown-results:end -->\n"
                   "\n# Previous task\n")
    args = argparse.Namespace(out=out, steps=2, seeds=[0], eval_every=0, eval_prompts=4, pass_k=2, final_prompts=5,
                              sft_steps=0, pref_steps=2, task_args=[], boot=50, claims=None, doc=doc,
                              report_only=False,
                              extra=["train.global_batch_prompts=4", "train.mini_batch_prompts=2",
                                     "rollout.n_samples=2", "rollout.max_new_tokens=12"])
    overrides = bench.countdown_train_overrides(task, args)
    assert "checkpoint.resume=auto" in overrides and "reward.fns=[{name: countdown, weight: 1.0}]" in overrides
    cfg = load_config("tiny_grpo", [*overrides, f"output_dir={out / 'grpo-seed0'}", "seed=0"])
    train(cfg)
    res = bench.run_countdown("grpo", 0, out, task, overrides, args)  # finished: skips training, evaluates
    assert res.error is None and len(res.held["greedy"]) == 5 and res.held["k"] == 2
    assert len(bench.per_step(res.rows, "clipfrac")) == 2
    (out / "sft-heldout.json").write_text((out / "grpo-seed0" / "heldout.json").read_text())
    pref = bench.countdown_pref_overrides(task, args)
    for loss in ("dpo", "tdpo1"):  # P12 on the task's pairs, one step each
        train(load_config(f"tiny_{loss}", [*pref, f"output_dir={out / f'{loss}-seed0'}", "seed=0",
                                           "preference.batch_pairs=2", "preference.eval_max_pairs=2",
                                           "eval.max_prompts=2", "train.steps=1"]))
        # the bench's per-pair evaluation (float64, plain logits) against the trainer's (fused kernel) numbers
        held = bench.run_countdown(loss, 0, out, task, pref, args).held
        final = next(r for r in bench.read_rows(out / f"{loss}-seed0") if "final/pref_acc" in r)
        assert len(held["kl_chosen"]) == 2 and held["tokens_chosen"][0] >= 2
        assert sum(held["kl_sum_chosen"]) / sum(held["tokens_chosen"]) == pytest.approx(
            final["final/kl_per_token_chosen"], rel=1e-4, abs=1e-7)
        assert sum(held["kl_sum_rejected"]) / sum(held["tokens_rejected"]) == pytest.approx(
            final["final/kl_per_token_rejected"], rel=1e-4, abs=1e-7)
        assert sum(held["pref_acc"]) / 2 == final["final/pref_acc"]
        assert final["final/kl_per_token_chosen"] > 0  # one step moved the policy off the reference
    judged = bench.report_countdown(args, ["grpo", "steer", "dpo", "tdpo1", "tdpo2"], task, overrides)
    p12 = {(j["method"], j["metric"]): j for j in judged if j["pid"] == "P12"}
    assert p12["tdpo2", "kl_chosen"]["verdict"] == "not run"
    assert p12["tdpo1", "kl_chosen"]["verdict"] in ("shown", "not shown", "opposite")
    assert p12["tdpo1", "pref_acc"]["verdict"] in ("holds", "does not hold")
    p0 = [j for j in judged if j["pid"] == "P0"]
    assert all(j["est"] == 0.0 for j in p0)  # the same held-out file on both sides
    assert {j["verdict"] for j in judged if j["pid"] == "P1"} == {"not run"}  # steer has no run
    text = doc.read_text()
    assert text.startswith("# Predictions\n\nkept") and text.rstrip().endswith("# Previous task")
    assert "### Predictions, judged" in text and "STALE BLOCK" not in text and "| tdpo1 | 1 |" in text
    assert (tmp_path / "methods" / "countdown_greedy_acc.png").exists()
