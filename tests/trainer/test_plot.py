"""`creditrl plot RUN_DIR` (creditrl/trainer/plot.py): PNGs of a real tiny run's metrics, and its errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from creditrl.cli import app

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tiny_task, tmp_path_factory):
    run = tmp_path_factory.mktemp("plot") / "run"
    result = runner.invoke(app, ["train", "tiny_grpo", *tiny_task.overrides(
        run, "train.global_batch_prompts=8", "eval.max_prompts=16", "eval.pass_k=2", "train.steps=3",
        "eval.every_steps=2", "logging.samples_every=0")])
    assert result.exit_code == 0, result.output
    return run


def _assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, (path, img.shape)
    return img.shape


def test_plot_default_metrics(run_dir):
    result = runner.invoke(app, ["plot", str(run_dir)])
    assert result.exit_code == 0, result.output
    out = run_dir / "plots"
    names = sorted(p.name for p in out.glob("*.png"))
    for name in ("reward_mean.png", "train_accuracy.png", "actor_entropy.png", "pg_clipfrac.png",
                 "response_length_mean.png", "eval_greedy_acc.png", "eval_pass_2.png", "overview.png"):
        assert name in names, names
    for p in out.glob("*.png"):
        _assert_png(p)
    assert not (out / "critic_value_loss.png").exists()  # no critic in this run
    h, w, _ = _assert_png(out / "overview.png")
    assert w > _assert_png(out / "reward_mean.png")[1]  # the grid is wider than one plot
    assert "wrote" in result.output


def test_plot_chosen_metrics_and_out_dir(run_dir, tmp_path):
    out = tmp_path / "figs"
    result = runner.invoke(app, ["plot", str(run_dir), "--out", str(out), "--metrics", "reward/mean, timing_s/gen"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["overview.png", "reward_mean.png", "timing_s_gen.png"]


def test_plot_errors(run_dir, tmp_path):
    missing = runner.invoke(app, ["plot", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "run directory not found" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    no_metrics = runner.invoke(app, ["plot", str(empty)])
    assert no_metrics.exit_code == 2 and "no metrics.jsonl" in no_metrics.output
    unknown = runner.invoke(app, ["plot", str(run_dir), "--metrics", "reward/mean,bogus/key"])
    assert unknown.exit_code == 2 and "bogus/key" in unknown.output and "reward/mean" in unknown.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\nnot json\n')
    broken = runner.invoke(app, ["plot", str(bad)])
    assert broken.exit_code == 2 and "metrics.jsonl:2" in broken.output


def test_plot_appends_final_eval_and_skips_nan(tmp_path):
    from creditrl.trainer.plot import _with_final, load_series

    rows = [{"step": 0, "eval/greedy_acc": 0.5}, {"step": 1, "reward/mean": float("nan")},
            {"step": 2, "reward/mean": 0.25}, {"step": 2, "final/greedy_acc": 0.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    series = load_series(tmp_path)
    assert series["reward/mean"] == [(2, 0.25)]
    assert _with_final(series, "eval/greedy_acc") == [(0, 0.5), (2, 0.75)]
