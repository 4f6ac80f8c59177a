"""The on-policy shortcut (`train.skip_old_pass`, issue 15): the default recipe with and without the separate
old-log-prob pass, alternating, same warm start, same seeds. Reports the median step time and the old-pass /
update time of each, and checks that the two runs of a seed logged the same numbers (every metric but the
wall-clock `timing_s/*` and `perf/*`): the shortcut must change the time, never the result.

    python bench/old_pass_shortcut.py --model tiny/sft --data tiny/data --seeds 0 1 2 --steps 20 [--json out.json]

(`make demo` or `creditrl tiny init && creditrl sft tiny_grpo` makes tiny/sft and tiny/data.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)

VOLATILE = ("timing_s/", "perf/")


def run(model: str, data: str, seed: int, steps: int, skip: bool, out: Path) -> list[dict]:
    from creditrl.config import load_config
    from creditrl.trainer.loop import train

    cfg = load_config("tiny_grpo", [f"model.path={model}", f"data.train_files=[{data}/train.jsonl]",
                                    f"data.eval_files=[{data}/eval.jsonl]", f"seed={seed}", f"train.steps={steps}",
                                    f"train.skip_old_pass={str(skip).lower()}", "eval.max_prompts=200",
                                    "eval.pass_k=0", "logging.progress=false", "logging.samples_every=0",
                                    f"output_dir={out}", "checkpoint.every_steps=0"])
    train(cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny/sft")
    ap.add_argument("--data", default="tiny/data")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            records = {}
            for skip in (False, True):  # alternating, the full path first
                records[skip] = run(args.model, args.data, seed, args.steps, skip, Path(tmp) / f"s{seed}-{skip}")
            same = all({k: v for k, v in a.items() if not k.startswith(VOLATILE)} ==
                       {k: v for k, v in b.items() if not k.startswith(VOLATILE)}
                       for a, b in zip(records[False], records[True])) and len(records[False]) == len(records[True])
            for skip, recs in records.items():
                steps = [r for r in recs if "timing_s/step" in r][1:]  # the first step warms up
                final = next(r for r in recs if "final/greedy_acc" in r)["final/greedy_acc"]
                rows.append({"seed": seed, "skip_old_pass": skip, "identical_metrics": same,
                             "step_s": statistics.median(r["timing_s/step"] for r in steps),
                             "old_pass_s": statistics.median(r.get("timing_s/old_log_prob", 0.0) for r in steps),
                             "update_s": statistics.median(r["timing_s/update_actor"] for r in steps),
                             "final_greedy_acc": final})
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}")
    print("| seed | skip_old_pass | step s (median) | old pass s | update s | final greedy acc | metrics identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['skip_old_pass']} | {r['step_s']:.3f} | {r['old_pass_s']:.3f} | {r['update_s']:.3f} "
              f"| {r['final_greedy_acc']:.3f} | {r['identical_metrics']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
