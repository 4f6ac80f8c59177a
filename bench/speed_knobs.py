"""One speed knob of issue 15 off and on: the default recipe, alternating, same warm start, same seeds.

Reports the median step time and its parts (generation, old-log-prob pass, update) with the knob off and on, the
final held-out greedy accuracy of each, and how far the logged numbers of the two runs of a seed are apart (every
metric but the wall-clock `timing_s/*` and `perf/*`): a knob that must not change results shows 0 (the on-policy
shortcut) or float-rounding differences that stay small over the run (packing, shared prompt prefill).

    python bench/speed_knobs.py --model tiny/sft --data tiny/data --knob train.skip_old_pass --seeds 0 1 2 --steps 20
    python bench/speed_knobs.py ... --knob train.pack_groups
    python bench/speed_knobs.py ... --knob rollout.share_prompt_prefill
    python bench/speed_knobs.py ... --knob model.compile --steps 60   # compile time: the first step, left out

(`make demo` or `creditrl tiny init && creditrl sft tiny_grpo` makes tiny/sft and tiny/data.) Each run is one
thread (`OMP_NUM_THREADS=1`); the first step of each run (warm-up, compilation) is left out of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)

VOLATILE = ("timing_s/", "perf/")
PARTS = ("timing_s/step", "timing_s/gen", "timing_s/old_log_prob", "timing_s/update_actor")


def run(model: str, data: str, seed: int, steps: int, knob: str, on: bool, out: Path) -> list[dict]:
    """One `creditrl train` of the default recipe in a fresh one-thread process; its metrics.jsonl rows."""
    overrides = [f"model.path={model}", f"data.train_files=[{data}/train.jsonl]",
                 f"data.eval_files=[{data}/eval.jsonl]", f"seed={seed}", f"train.steps={steps}",
                 f"{knob}={str(on).lower()}", "eval.max_prompts=200", "eval.pass_k=0", "logging.progress=false",
                 "logging.samples_every=0", f"output_dir={out}", "checkpoint.every_steps=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "creditrl.cli", "train", "tiny_grpo", *overrides], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def max_metric_gap(a: list[dict], b: list[dict]) -> float:
    """Largest |difference| of any logged number between two runs, step by step (inf if their rows differ)."""
    if len(a) != len(b):
        return float("inf")
    gap = 0.0
    for ra, rb in zip(a, b):
        keys = {k for k in ra if not k.startswith(VOLATILE)}
        if keys != {k for k in rb if not k.startswith(VOLATILE)}:
            return float("inf")
        for k in keys:
            if isinstance(ra[k], (int, float)) and isinstance(rb[k], (int, float)):
                gap = max(gap, abs(float(ra[k]) - float(rb[k])))
    return gap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny/sft")
    ap.add_argument("--data", default="tiny/data")
    ap.add_argument("--knob", default="train.skip_old_pass", help="a boolean recipe key")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            records = {}
            for on in (False, True) if seed % 2 == 0 else (True, False):  # alternating order
                records[on] = run(args.model, args.data, seed, args.steps, args.knob, on, Path(tmp) / f"s{seed}-{on}")
            gap = max_metric_gap(records[False], records[True])
            for on, recs in records.items():
                steps = [r for r in recs if "timing_s/step" in r][1:]  # the first step warms up
                final = next(r for r in recs if "final/greedy_acc" in r)["final/greedy_acc"]
                rows.append({"seed": seed, "on": on, "max_metric_gap": gap, "final_greedy_acc": final,
                             **{p: statistics.median(r.get(p, 0.0) for r in steps) for p in PARTS}})
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"1-min load at the end {os.getloadavg()[0]:.2f}")
    print(f"| seed | {args.knob} | step s | generation s | old pass s | update s | final greedy acc "
          "| max metric gap off/on |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["seed"], r["on"])):
        print(f"| {r['seed']} | {r['on']} | {r['timing_s/step']:.3f} | {r['timing_s/gen']:.3f} "
              f"| {r['timing_s/old_log_prob']:.3f} | {r['timing_s/update_actor']:.3f} | {r['final_greedy_acc']:.3f} "
              f"| {r['max_metric_gap']:.2g} |")
    for on in (False, True):
        mine = [r for r in rows if r["on"] == on]
        print(f"{args.knob}={on}: median step {statistics.median(r['timing_s/step'] for r in mine):.3f} s, "
              f"mean final greedy acc {statistics.mean(r['final_greedy_acc'] for r in mine):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
