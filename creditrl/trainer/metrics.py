"""Metrics sinks: JSONL (always), TensorBoard (optional), and the rich console line per step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Metrics shown on the one-line console summary, with short labels.
SUMMARY_KEYS = [
    ("reward/mean", "reward"),
    ("train/accuracy", "acc"),
    ("actor/entropy", "ent"),
    ("actor/kl_loss", "kl"),
    ("pg_clipfrac", "clip"),
    ("response/length_mean", "len"),
    ("perf/tokens_per_s", "tok/s"),
]


class MetricsWriter:
    """Appends one JSON object per step to `metrics.jsonl`; mirrors scalars to TensorBoard if enabled."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be recomputed) and the end-of-run
        evaluation of the interrupted run (the resumed run is not over)."""
        keep = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("step", 0) <= step and not any(k.startswith("final/") for k in record):
                keep.append(line)
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def summary_line(step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for key, label in SUMMARY_KEYS:
        if key in metrics:
            v = metrics[key]
            parts.append(f"{label} {v:.0f}" if abs(v) >= 100 else f"{label} {v:.3f}")
    timing = [(k.split("/")[-1], v) for k, v in metrics.items() if k.startswith("timing_s/") and k != "timing_s/step"]
    if timing:
        parts.append("time " + " ".join(f"{k} {v:.2f}s" for k, v in timing))
    return " | ".join(parts)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
