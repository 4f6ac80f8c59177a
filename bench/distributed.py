"""Single process vs Ray worker groups on the tiny task: held-out accuracy and throughput at the same global batch.

For each seed: `creditrl tiny init --seed S`, `creditrl sft tiny_grpo` (one warm start shared by every variant),
then one GRPO run per variant, each a separate `creditrl train` process (as a user runs it):

    single      tiny_grpo                (one process)
    ray_zero2   tiny_grpo_ray            (2 HF-generate rollout actors + 2 DeepSpeed ZeRO-2 ranks, gloo)
    ray_zero3   tiny_grpo_ray_zero3      (same, ZeRO-3)

    python bench/distributed.py --seeds 0 1 2 [--variants single ray_zero2 ray_zero3] [--set key=value ...]
        [--out /tmp/creditrl-dist-bench] [--json results.json]

Throughput is read from each run's metrics.jsonl over steps > 5 (LR warm-up and first-call costs excluded):
rollout tokens/s = response tokens / timing_s/gen; learner tokens/s = (prompt + response tokens) /
(timing_s/old_log_prob + timing_s/update_actor); weight sync = timing_s/update_weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "creditrl.cli"]
VARIANTS = {"single": "tiny_grpo", "ray_zero2": "tiny_grpo_ray", "ray_zero3": "tiny_grpo_ray_zero3"}


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(CLI + args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2 if xs else float("nan")


def summarize(run_dir: Path, wall_s: float) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in rows if "final/greedy_acc" in r)
    steps = [r for r in rows if r.get("step", 0) > 5 and "timing_s/gen" in r]
    gen = sum(r["timing_s/gen"] for r in steps)
    learn = sum(r["timing_s/old_log_prob"] + r["timing_s/update_actor"] for r in steps)
    tok_resp = sum(r["perf/rollout_tokens_per_s"] * r["timing_s/gen"] for r in steps)
    tok_all = sum(r["perf/learner_tokens_per_s"] * (r["timing_s/old_log_prob"] + r["timing_s/update_actor"])
                  for r in steps)
    return {"before": rows[0]["eval/greedy_acc"], "after": final["final/greedy_acc"],
            "rollout_tok_s": tok_resp / gen, "learner_tok_s": tok_all / learn,
            "s_per_step": median([r["timing_s/step"] for r in steps]),
            "sync_s": median([r.get("timing_s/update_weights", 0.0) for r in steps]), "wall_s": wall_s}


def one_seed(seed: int, variants: list[str], extra: list[str], out: Path) -> dict:
    tiny = out / f"tiny-seed{seed}"
    data = [f"data.train_files=[{tiny}/data/train.jsonl]", f"data.eval_files=[{tiny}/data/eval.jsonl]",
            f"seed={seed}", "logging.progress=false"]
    if not (tiny / "sft" / "config.json").exists():
        run(["tiny", "init", "--out", str(tiny), "--seed", str(seed), "--force"])
        run(["sft", "tiny_grpo", f"sft.init_path={tiny}/base", f"sft.output_path={tiny}/sft", *data])
    res = {}
    for v in variants:
        run_dir = out / f"{v}-seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume of an earlier one
        wall = run(["train", VARIANTS[v], f"model.path={tiny}/sft", f"output_dir={run_dir}",
                    *data, *extra])
        res[v] = summarize(run_dir, wall)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", nargs="*", default=[], help="extra dotted overrides for every run")
    ap.add_argument("--out", type=Path, default=Path("/tmp/creditrl-dist-bench"))
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    results = {}
    for s in args.seeds:
        results[s] = one_seed(s, args.variants, args.set, args.out)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    lines = ["| seed | variant | greedy acc before -> after | rollout tok/s | learner tok/s | s/step | "
             "weight sync s/step | wall s |", "|---|---|---|---|---|---|---|---|"]
    for s, res in results.items():
        for v, r in res.items():
            lines.append(f"| {s} | {v} | {100 * r['before']:.1f} -> {100 * r['after']:.1f}% | "
                         f"{r['rollout_tok_s']:.0f} | {r['learner_tok_s']:.0f} | {r['s_per_step']:.2f} | "
                         f"{r['sync_s']:.2f} | {r['wall_s']:.0f} |")
    for v in args.variants:
        accs = [100 * results[s][v]["after"] for s in results]
        lines.append(f"\n{v}: mean final greedy accuracy {sum(accs) / len(accs):.1f}% over seeds "
                     f"{', '.join(map(str, results))}")
    print("\n".join(lines))  # noqa: T201 - a benchmark script's report


if __name__ == "__main__":
    main()
