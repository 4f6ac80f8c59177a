"""Metrics sinks: JSONL (always), experiment trackers through accelerate's tracking module (`logging.report_to`:
TensorBoard, W&B, MLflow, ...), the samples table, and the rich console line per step (docs/tracking.md)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Metrics shown on the one-line console summary, with short labels.
SUMMARY_KEYS = [
    ("reward/mean", "reward"),
    ("train/accuracy", "acc"),
    ("actor/entropy", "ent"),
    ("actor/kl_loss", "kl"),
    ("pg_clipfrac", "clip"),
    ("response/length_mean", "len"),
    ("critic/value_loss", "vloss"),  # PPO with a critic only
    ("critic/explained_variance", "ev"),
    ("perf/tokens_per_s", "tok/s"),
]


TRACKER_STATE = "trackers.json"  # RUN_DIR file: each tracker's run id, so a resumed run logs into the same run


def effective_report_to(report_to: list[str], tensorboard: bool = False) -> list[str]:
    """`report_to` with the deprecated `logging.tensorboard: true` folded in."""
    names = list(report_to)
    if tensorboard:
        log.warning("logging.tensorboard is deprecated: use logging.report_to=[tensorboard]")
        if "tensorboard" not in names:
            names.append("tensorboard")
    return names


def flatten_config(values: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested dict (the resolved recipe) as `{"a.b.c": scalar}`; lists and None become strings (every tracker's
    hyper-parameter API takes scalars)."""
    out: dict[str, bool | int | float | str] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    out[key] = values if isinstance(values, (bool, int, float, str)) else json.dumps(values, default=str)
    return out


_MLFLOW_BAD = re.compile(r"[^\w\-. :/]")


class Trackers:
    """The `logging.report_to` trackers of one run: accelerate's tracker classes, used without an `Accelerator`
    (the loop's driver process is the only one that logs). Each writes inside the run directory unless the
    user's environment says otherwise: tensorboard -> RUN_DIR/tensorboard; wandb -> RUN_DIR/wandb, offline unless
    WANDB_MODE is set; mlflow -> the file store RUN_DIR/mlruns unless MLFLOW_TRACKING_URI is set.

    Resume (`resume_step`): TensorBoard purges the events of steps after the checkpoint (SummaryWriter
    `purge_step`); MLflow logs into the same run (its id is kept in RUN_DIR/trackers.json), so the steps between
    the checkpoint and the interruption hold two values each (the recomputed one last); W&B online resumes the
    same run (`resume="allow"`) and ignores steps at or below the last one it has (the recomputed values of those
    steps are only in metrics.jsonl); W&B offline can not resume a run: a new offline run holds the steps after
    the checkpoint. Hyper-parameters (the flattened resolved recipe) are logged once, by a fresh run.
    """

    def __init__(self, names: list[str], run_dir: Path, project: str, run_name: str | None,
                 config: dict | None = None, resume_step: int | None = None):
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        PartialState()  # accelerate's tracker methods log through its logger, which needs the process state
        self.run_dir = Path(run_dir)
        state_file = self.run_dir / TRACKER_STATE
        ids = json.loads(state_file.read_text()) if resume_step is not None and state_file.exists() else {}
        run_name = run_name or self.run_dir.name
        self.trackers = []
        try:
            for name in names:
                tracker = self._make(LOGGER_TYPE_TO_CLASS[name], name, project, run_name, ids.get(name), resume_step)
                tracker.main_process_only = False  # no PartialState.on_main_process: one process logs
                tracker.start()
                if config is not None and resume_step is None:
                    tracker.store_init_configuration(flatten_config(config))
                self.trackers.append(tracker)
                log.info("tracking: %s (%s)", name, self._where(name))
        except Exception:
            self.close()
            raise
        ids.update(self._ids())
        if ids:
            state_file.write_text(json.dumps(ids))

    def _make(self, cls, name: str, project: str, run_name: str, run_id: str | None, resume_step: int | None):
        d = self.run_dir
        if name == "tensorboard":
            return cls("tensorboard", str(d), purge_step=None if resume_step is None else resume_step + 1)
        if name == "wandb":
            import wandb

            mode = os.environ.get("WANDB_MODE", "offline")
            kw: dict[str, Any] = {"name": run_name, "dir": str(d), "mode": mode,
                                  "settings": wandb.Settings(console="off")}
            if run_id and mode != "offline":
                kw.update(id=run_id, resume="allow")
            return cls(project, **kw)
        if name == "mlflow":
            import mlflow

            if not os.environ.get("MLFLOW_TRACKING_URI"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps file stores behind this
                mlflow.set_tracking_uri((d / "mlruns").resolve().as_uri())
            else:
                mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
            return cls(experiment_name=project, run_name=run_name, run_id=run_id)
        if name == "aim":
            return cls(run_name, str(d))
        if name == "clearml":
            return cls(run_name, project_name=project)
        if name == "dvclive":
            return cls(run_name, dir=str(d / "dvclive"))
        if name == "swanlab":
            return cls(project, experiment_name=run_name, logdir=str(d / "swanlog"))
        if name == "trackio":
            return cls(project, name=run_name)
        return cls(project)  # comet_ml: the project; the run is named by the tracker

    def _where(self, name: str) -> str:
        if name == "tensorboard":
            return str(self.run_dir / "tensorboard")
        if name == "wandb":
            return f"{self.run_dir / 'wandb'}, mode {os.environ.get('WANDB_MODE', 'offline')}"
        if name == "mlflow":
            import mlflow

            return mlflow.get_tracking_uri()
        return "its default location"

    def _ids(self) -> dict[str, str]:
        ids = {}
        for t in self.trackers:
            if t.name == "wandb" and getattr(t, "run", None) is not None:
                ids["wandb"] = t.run.id
            elif t.name == "mlflow" and getattr(t, "active_run", None) is not None:
                ids["mlflow"] = t.active_run.info.run_id
        return ids

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for t in self.trackers:
            values = {_MLFLOW_BAD.sub("_", k): v for k, v in metrics.items()} if t.name == "mlflow" else metrics
            t.log(values, step=step)

    def log_table(self, name: str, columns: list[str], data: list[list], step: int) -> None:
        """A table to the trackers that take tables (W&B, ClearML); the others skip it."""
        for t in self.trackers:
            if hasattr(t, "log_table"):
                t.log_table(name, columns=columns, data=data, step=step)

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.finish()
            except Exception as e:  # one tracker failing to flush must not hide the others' or the run's result
                log.warning("closing the %s tracker failed: %s", t.name, e)
        self.trackers = []


class MetricsWriter:
    """Appends one JSON object per step to `metrics.jsonl` (always: the run's own record); mirrors the scalars to
    the `report_to` trackers; appends sample rows to `samples.jsonl` (+ a table to trackers that take tables).

    `tensorboard=True` is the deprecated `logging.tensorboard` (same as "tensorboard" in `report_to`).
    On resume (`resume_step`), records of later steps are dropped from both JSONL files.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int | None = None,
                 report_to: list[str] | None = None, project: str = "creditrl", run_name: str | None = None,
                 config: dict | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.samples_path = Path(run_dir) / "samples.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.samples_path):
            if resume_step is not None and path.exists():
                _truncate_after(path, resume_step)
            elif resume_step is None and path.exists():
                path.unlink()
        names = effective_report_to(report_to or [], tensorboard)
        self.trackers = Trackers(names, Path(run_dir), project, run_name, config, resume_step) if names else None

    @classmethod
    def from_config(cls, run_dir: Path, cfg, resume_step: int | None = None) -> "MetricsWriter":
        """The writer of a recipe's `logging` section (hyper-parameters: the resolved recipe)."""
        from creditrl.config import to_dict

        lc = cfg.logging
        return cls(run_dir, lc.tensorboard, resume_step, lc.report_to, lc.project, lc.run_name, to_dict(cfg))

    def _truncate_after(self, step: int) -> None:
        _truncate_after(self.path, step)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(step, {k: float(v) for k, v in metrics.items()})

    def write_samples(self, step: int, rows: list[dict]) -> None:
        """Sample rows of `step` (creditrl/trainer/samples.py) to samples.jsonl and as a `samples` table."""
        if not rows:
            return
        with open(self.samples_path, "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if self.trackers is not None:
            from creditrl.trainer.samples import table

            columns, data = table(rows)
            self.trackers.log_table("samples", columns, data, step)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def _truncate_after(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint (they will be recomputed) and the end-of-run
    evaluation of the interrupted run (the resumed run is not over)."""
    keep = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("step", 0) <= step and not any(k.startswith("final/") for k in record):
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))


def summary_line(step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for key, label in SUMMARY_KEYS:
        if key in metrics:
            v = metrics[key]
            parts.append(f"{label} {v:.0f}" if abs(v) >= 100 else f"{label} {v:.3f}")
    # the held-out evaluation of this step, when one ran (eval.every_steps)
    evals = [f"eval acc {100 * metrics['eval/greedy_acc']:.1f}%"] if "eval/greedy_acc" in metrics else []
    evals += [f"{k.split('/', 1)[1]} {100 * v:.1f}%" for k, v in metrics.items() if k.startswith("eval/pass@")]
    if evals:
        parts.append(" ".join(evals))
    timing = [(k.split("/")[-1], v) for k, v in metrics.items() if k.startswith("timing_s/") and k != "timing_s/step"]
    if timing:
        parts.append("time " + " ".join(f"{k} {v:.2f}s" for k, v in timing))
    return " | ".join(parts)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
