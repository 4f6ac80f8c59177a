"""Experiment tracking (`logging.report_to`, creditrl/trainer/metrics.py): a tiny run of the real trainer writes
TensorBoard, W&B (offline) and MLflow (local file store) inside its run directory, and each is read back and
compared with metrics.jsonl; the samples table; the eval results on the console line; config-time errors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from creditrl.cli import app
from tests.conftest import read_jsonl

runner = CliRunner()
STEPS = 2
RUN = ("train.global_batch_prompts=8", "eval.max_prompts=16", "eval.pass_k=2", f"train.steps={STEPS}",
       "eval.every_steps=1", "logging.samples_every=1", "logging.samples_per_step=4", "logging.run_name=tiny-track")


@pytest.fixture(scope="module")
def tracked_run(tiny_task, tmp_path_factory):
    """One 2-step run logging to TensorBoard, W&B and MLflow at once: (run dir, console output)."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[test]')")
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e '.[tracking]')")
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (pip install -e '.[tracking]')")
    run = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "WANDB_DIR"):
            mp.delenv(var, raising=False)
        mp.setenv("WANDB_SILENT", "true")
        result = runner.invoke(app, ["train", "tiny_grpo", *tiny_task.overrides(
            run, *RUN, "logging.report_to=[tensorboard,wandb,mlflow]", "logging.progress=true")])
    assert result.exit_code == 0, result.output
    return run, result.output


def _step_metrics(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if "reward/mean" in r}


# ---- MLflow --------------------------------------------------------------------------------------------------
def test_mlflow_file_store_read_back(tracked_run):
    run, _ = tracked_run
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert (run / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    expected = _step_metrics(run)
    for key in ("reward/mean", "actor/entropy", "response/length_mean"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(s, expected[s][key]) for s in sorted(expected)], key
    # '@' is not allowed in MLflow names: eval/pass@2 is logged as eval/pass_2 (step 1: eval.every_steps=1)
    evals = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if "eval/pass@2" in r}
    history = {m.step: m.value for m in client.get_metric_history(run_id, "eval/pass_2")}
    assert history == {s: r["eval/pass@2"] for s, r in evals.items()} and 1 in history
    info = client.get_run(run_id)
    assert info.data.params["train.steps"] == str(STEPS) and info.data.params["logging.report_to"]
    assert info.info.run_name == "tiny-track"
    assert client.get_experiment(info.info.experiment_id).name == "creditrl"


# ---- W&B (offline) --------------------------------------------------------------------------------------------
def _wandb_records(path: Path):
    """The records of a W&B transaction log (`run-ID.wandb`): a 7-byte header (":W&B", magic, version), then
    LevelDB-log framing (32 KiB blocks; records of checksum u32, length u16, type u8: full/first/middle/last)
    around serialized `wandb_internal_pb2.Record`s. wandb 0.31 no longer ships a Python reader of its own."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def test_wandb_offline_read_back(tracked_run):
    run, _ = tracked_run
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    assert files[0].name == f"run-{run_id}.wandb"
    history, config = {}, {}
    for rec in _wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
    expected = _step_metrics(run)
    for step, record in expected.items():
        for key in ("reward/mean", "actor/entropy", "train/accuracy", "response/length_mean"):
            assert math.isclose(history[step][key], record[key], rel_tol=0, abs_tol=0), (step, key)
    assert history[1]["eval/pass@2"] == next(r for r in read_jsonl(run / "metrics.jsonl")
                                             if r["step"] == 1 and "eval/pass@2" in r)["eval/pass@2"]
    assert config["train.steps"] == STEPS and config["logging.project"] == "creditrl"
    # the samples table of each step: a W&B table file whose rows are samples.jsonl's
    samples = read_jsonl(run / "samples.jsonl")
    for step in range(1, STEPS + 1):
        assert history[step]["samples/_type"] == "table-file"
        table = json.loads((files[0].parent / "files" / history[step]["samples/path"]).read_text())
        rows = [dict(zip(table["columns"], r)) for r in table["data"]]
        want = [r for r in samples if r["step"] == step]
        assert [r["completion"] for r in rows] == [r["completion"] for r in want]
        assert [r["reward"] for r in rows] == [r["reward"] for r in want]


# ---- TensorBoard ----------------------------------------------------------------------------------------------
def test_tensorboard_read_back(tracked_run):
    run, _ = tracked_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    expected = _step_metrics(run)
    events = acc.Scalars("reward/mean")
    assert [e.step for e in events] == sorted(expected)
    for e in events:  # event files store float32
        assert math.isclose(e.value, expected[e.step]["reward/mean"], rel_tol=1e-6, abs_tol=1e-7)
    assert "final/greedy_acc" in acc.Tags()["scalars"]


# ---- samples table, console ------------------------------------------------------------------------------------
def test_samples_jsonl(tracked_run):
    run, _ = tracked_run
    rows = read_jsonl(run / "samples.jsonl")
    assert [r["step"] for r in rows] == [1] * 4 + [2] * 4
    for r in rows:
        assert set(r) >= {"prompt", "completion", "reward", "reward/numeric_answer", "advantage",
                          "response_length", "finished", "group"}
        assert r["prompt"] and isinstance(r["completion"], str) and isinstance(r["finished"], bool)
        assert r["reward"] == pytest.approx(r["reward/numeric_answer"])  # one function, weight 1
        assert 0 < r["response_length"] <= 6 and math.isfinite(r["advantage"])


def test_console_line_shows_step_eval(tracked_run):
    _, output = tracked_run
    line = next(ln for ln in output.splitlines() if "step 1/2" in ln)
    assert "eval acc" in line and "pass@2" in line
    assert "eval acc" not in next(ln for ln in output.splitlines() if "step 2/2" in ln)


def test_summary_line_eval_part():
    from creditrl.trainer.metrics import summary_line

    line = summary_line(3, 10, {"reward/mean": 0.5, "eval/greedy_acc": 0.625, "eval/pass@8": 0.8125,
                                "eval/sample_acc": 0.5})
    assert line == "step 3/10 | reward 0.500 | eval acc 62.5% pass@8 81.2%"
    assert "eval" not in summary_line(4, 10, {"reward/mean": 0.5})


# ---- units: writer, resume, config errors ----------------------------------------------------------------------
def test_deprecated_tensorboard_alias(tmp_path, caplog):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from creditrl.trainer.metrics import MetricsWriter

    with caplog.at_level("WARNING"):
        w = MetricsWriter(tmp_path, tensorboard=True)
    assert "logging.tensorboard is deprecated" in caplog.text
    w.write(1, {"reward/mean": 0.25})
    w.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25)]


def test_resume_truncates_metrics_and_samples(tmp_path):
    from creditrl.trainer.metrics import MetricsWriter

    w = MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        w.write(step, {"reward/mean": step})
        w.write_samples(step, [{"completion": f"c{step}"}])
    w.write(3, {"final/greedy_acc": 0.5})
    w.close()
    MetricsWriter(tmp_path, resume_step=2).close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["completion"] for r in read_jsonl(tmp_path / "samples.jsonl")] == ["c1", "c2"]
    MetricsWriter(tmp_path).close()  # a fresh run starts both files anew
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "samples.jsonl").exists()


def test_unknown_tracker_is_a_config_error():
    from creditrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"logging\.report_to.*'nope'.*wandb"):
        load_config("tiny_grpo", ["logging.report_to=[nope]"])
    with pytest.raises(ConfigError, match="twice"):
        load_config("tiny_grpo", ["logging.report_to=[wandb,wandb]"])


def test_missing_tracker_package_names_the_fix(monkeypatch):
    from creditrl import preflight
    from creditrl.config import ConfigError, load_config

    cfg = load_config("tiny_grpo", ["logging.report_to=[mlflow]"])
    monkeypatch.setattr(preflight, "_missing_trackers", lambda names: ["mlflow"])
    with pytest.raises(ConfigError, match=r"logging\.report_to=\['mlflow'\].*pip install mlflow-skinny"):
        preflight.check_logging(cfg, {})


def test_cli_reports_missing_tracker(tiny_task, tmp_path, monkeypatch):
    from creditrl import preflight

    monkeypatch.setattr(preflight, "_missing_trackers", lambda names: [n for n in names if n == "aim"])
    result = runner.invoke(app, ["train", "tiny_grpo", *tiny_task.overrides(tmp_path / "r", "logging.report_to=[aim]")])
    assert result.exit_code == 2
    assert "logging.report_to" in result.output and "pip install aim" in result.output


def test_flatten_config():
    from creditrl.trainer.metrics import flatten_config

    flat = flatten_config({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "null", "e": "x"}


def test_resume_keeps_the_tracker_runs(tmp_path, monkeypatch):
    """A resumed writer logs into the same MLflow run (trackers.json) and TensorBoard purges the steps after the
    checkpoint; metrics.jsonl has each step once."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (pip install -e '.[tracking]')")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from creditrl.trainer.metrics import MetricsWriter

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    names = ["tensorboard", "mlflow"]
    w = MetricsWriter(tmp_path, report_to=names, config={"train": {"lr": 0.1}})
    for step in (1, 2, 3):
        w.write(step, {"reward/mean": step})
    w.close()
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    w = MetricsWriter(tmp_path, resume_step=2, report_to=names, config={"train": {"lr": 0.2}})
    w.write(3, {"reward/mean": 30.0})
    w.write(4, {"reward/mean": 40.0})
    w.close()
    assert json.loads((tmp_path / "trackers.json").read_text())["mlflow"] == run_id
    assert [r["reward/mean"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 30, 40]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "reward/mean")]
    assert sorted(history) == [(1, 1), (2, 2), (3, 3), (3, 30), (4, 40)]  # MLflow keeps both values of step 3
    assert client.get_run(run_id).data.params == {"train.lr": "0.1"}  # hyper-parameters: once, by the fresh run
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 1), (2, 2), (3, 30), (4, 40)]
