"""`creditrl plot RUN_DIR`: PNG plots of a run's metrics.jsonl (matplotlib, Agg backend: no display needed).

One PNG per main metric present in the run (reward, train accuracy, entropy, KL loss, clip fraction, response
length, the held-out evaluations, the critic's value loss and explained variance when there is a critic), named
after the key (`reward/mean` -> `reward_mean.png`), and `overview.png`, a grid of all of them. A step logged
twice (a resumed run whose metrics.jsonl was edited by hand) keeps its last value.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

log = logging.getLogger(__name__)

# The main metrics, in overview order; eval keys (greedy accuracy, pass@k) are added as found.
MAIN_METRICS = ["reward/mean", "train/accuracy", "actor/entropy", "actor/kl_loss", "pg_clipfrac",
                "response/length_mean", "critic/value_loss", "critic/explained_variance"]
EVAL_PATTERN = re.compile(r"^eval/(greedy_acc|pass@\d+)$")


class PlotError(ValueError):
    """A run directory that can not be plotted (missing, no metrics.jsonl, unreadable, unknown keys)."""


def load_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of RUN_DIR/metrics.jsonl, sorted by step, finite values only."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"run directory not found: {run_dir}. Fix: pass a run directory (output_dir of a recipe, "
                        f"e.g. runs/tiny-grpo-seed0)")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{run_dir} has no metrics.jsonl, so it is not a run directory (or the run wrote no step "
                        f"yet). Fix: pass the output_dir of a run that has started training")
    series: dict[str, dict[int, float]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise PlotError(f"{path}:{n} is not a metrics record ({type(e).__name__}: {e})") from None
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                series.setdefault(k, {})[step] = float(v)
    if not series:
        raise PlotError(f"{path} has no metrics yet. Fix: plot after the run has written a step")
    return {k: sorted(v.items()) for k, v in series.items()}


def default_metrics(series: dict[str, list]) -> list[str]:
    """The main metrics this run has, in overview order (the held-out evaluations after the training ones)."""
    keys = [k for k in MAIN_METRICS if k in series]
    evals = sorted(k for k in series if EVAL_PATTERN.match(k))
    return keys[:6] + evals + keys[6:]


def file_name(key: str) -> str:
    return re.sub(r"[^\w.-]+", "_", key).strip("_") + ".png"


def plot_run(run_dir: Path, out_dir: Path | None = None, metrics: list[str] | None = None) -> list[Path]:
    """Write one PNG per metric and overview.png to `out_dir` (default RUN_DIR/plots); the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    series = load_series(run_dir)
    if metrics:
        unknown = [k for k in metrics if k not in series]
        if unknown:
            raise PlotError(f"--metrics: {', '.join(unknown)} not in {run_dir / 'metrics.jsonl'}. Fix: choose from "
                            f"{', '.join(sorted(series))}")
        keys = list(metrics)
    else:
        keys = default_metrics(series)
        if not keys:
            raise PlotError(f"{run_dir / 'metrics.jsonl'} has none of the main metrics ({', '.join(MAIN_METRICS)}). "
                            f"Fix: name some with --metrics (choose from {', '.join(sorted(series))})")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    series = {k: _with_final(series, k) for k in keys}
    for key in keys:
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, key, series[key])
        fig.tight_layout()
        path = out / file_name(key)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        _draw(ax, key, series[key])
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    path = out / "overview.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    log.info("wrote %d plots to %s", len(written), out)
    return written


def _with_final(series: dict[str, list], key: str) -> list[tuple[int, float]]:
    """An eval/* series with the end-of-run evaluation (final/*, at the last step) appended."""
    points = dict(series[key])
    if key.startswith("eval/"):
        points.update(series.get("final/" + key.split("/", 1)[1], []))
    return sorted(points.items())


def _draw(ax, key: str, points: list[tuple[int, float]]) -> None:
    from matplotlib.ticker import MaxNLocator

    steps, values = zip(*points)
    ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
