"""Summarise preference runs into a markdown table: reference vs each loss, mean ± std over seeds.

    python -m creditrl.preference.report runs/tiny-dpo-seed0 runs/tiny-dpo-seed1 ... runs/tiny-tdpo2-seed2

Reads each run's `metrics.jsonl`: the step-0 evaluation (the reference model) and the `final/*` evaluation, and
groups runs by the loss in their `config.yaml`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

COLUMNS = (("pref_acc", "held-out pref. acc (logp_w > logp_l)", 100.0),
           ("pref_reward_acc", "implicit-reward acc", 100.0),
           ("greedy_acc", "greedy task acc", 100.0),
           ("kl_per_token_chosen", "KL/token chosen", 1.0),
           ("kl_per_token_rejected", "KL/token rejected", 1.0))


def read_run(run_dir: Path) -> tuple[str, dict[str, float], dict[str, float]]:
    """(loss, reference metrics, final metrics) of one run directory."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    before = next(r for r in rows if r.get("step") == 0 and "eval/pref_acc" in r)
    after = next(r for r in reversed(rows) if "final/pref_acc" in r)
    strip = lambda d, p: {k[len(p):]: v for k, v in d.items() if k.startswith(p)}  # noqa: E731
    return cfg["preference"]["loss"], strip(before, "eval/"), strip(after, "final/")


def _cell(values: list[float], scale: float) -> str:
    vals = [scale * v for v in values]
    fmt = "{:.1f}" if scale == 100.0 else "{:.3f}"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(statistics.stdev(vals))}"


def summarize(run_dirs: list[Path]) -> str:
    """Markdown table: one reference row, then one row per loss (mean ± sample std over its runs)."""
    by_loss: dict[str, list[dict[str, float]]] = defaultdict(list)
    refs = []
    for d in run_dirs:
        loss, before, after = read_run(Path(d))
        by_loss[loss].append(after)
        refs.append(before)
    header = "| model | runs | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    lines.append("| reference (SFT) | - | " + " | ".join(_cell([refs[0][k]], s) for k, _, s in COLUMNS) + " |")
    for loss, runs in by_loss.items():
        lines.append(f"| {loss} | {len(runs)} | " + " | ".join(_cell([r[k] for r in runs], s) for k, _, s in COLUMNS)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    print(summarize(parser.parse_args(argv).run_dirs))  # noqa: T201 - command-line output


if __name__ == "__main__":
    main()
