"""Run the default recipe end to end (tiny init -> sft -> GRPO) for several seeds, as `make demo` does, and
write held-out greedy accuracy before/after RL and the wall time of each stage to docs/bench/default_recipe.md.

    python bench/default_recipe.py --seeds 0 1 2 [--engines hf vllm] [--out /tmp/demo-bench]
                                   [--doc docs/bench/default_recipe.md]

With several `--engines` (`rollout.engine` values) each seed's warm start is shared and the RL stage runs once per
engine, so the engines are compared from the same starting model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)

CLI = [sys.executable, "-m", "creditrl.cli"]


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(CLI + args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def one_seed(seed: int, out: Path, engines: list[str]) -> list[dict]:
    tiny = out / f"tiny-seed{seed}"
    data = [f"data.train_files=[{tiny}/data/train.jsonl]", f"data.eval_files=[{tiny}/data/eval.jsonl]",
            f"seed={seed}", "logging.progress=false"]
    t_init = run(["tiny", "init", "--out", str(tiny), "--seed", str(seed), "--force"])
    t_sft = run(["sft", "tiny_grpo", f"sft.init_path={tiny}/base", f"sft.output_path={tiny}/sft", *data])
    results = []
    for engine in engines:
        run_dir = out / f"run-seed{seed}-{engine}"
        t_rl = run(["train", "tiny_grpo", f"model.path={tiny}/sft", f"output_dir={run_dir}",
                    f"rollout.engine={engine}", *data])
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        final = next(r for r in rows if "final/greedy_acc" in r)
        steps = [r for r in rows if "perf/rollout_tokens_per_s" in r]
        pass_key = next(k for k in rows[0] if k.startswith("eval/pass@"))
        results.append({"seed": seed, "engine": engine, "before": rows[0]["eval/greedy_acc"],
                        "after": final["final/greedy_acc"], "pass_before": rows[0][pass_key],
                        "pass_after": final["final/" + pass_key.split("/")[1]], "k": pass_key.split("@")[1],
                        "t_init": t_init, "t_sft": t_sft, "t_rl": t_rl,
                        "rollout_tps": sorted(r["perf/rollout_tokens_per_s"] for r in steps)[len(steps) // 2],
                        "gap": max(r.get("mismatch/logprob_abs_diff_max", float("nan")) for r in steps)})
    return results


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU used"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--engines", nargs="+", default=["hf"], choices=["hf", "vllm"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/creditrl-default-recipe"))
    ap.add_argument("--doc", type=Path, default=Path("docs/bench/default_recipe.md"))
    args = ap.parse_args()
    results = [r for s in args.seeds for r in one_seed(s, args.out, args.engines)]
    lines = ["# Default recipe (`make demo`): tiny init -> SFT warm start -> GRPO", "",
             f"Machine: {machine()}. Command: `python bench/default_recipe.py --seeds "
             f"{' '.join(map(str, args.seeds))}` (each seed: `creditrl tiny init --seed S`, `creditrl sft tiny_grpo "
             f"seed=S`, `creditrl train tiny_grpo seed=S rollout.engine=E` for E in {' '.join(args.engines)}). "
             f"Held-out split: 200 prompts.", "",
             f"| seed | rollout.engine | greedy acc before RL | after RL | gain (points) | pass@{results[0]['k']} "
             f"before | after | tiny init s | SFT s | RL s (incl. 2 evals) | rollout tokens/s (median step) | "
             f"max abs log-prob gap, sampler vs trainer |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['seed']} | {r['engine']} | {100 * r['before']:.1f}% | {100 * r['after']:.1f}% | "
                     f"{100 * (r['after'] - r['before']):+.1f} | {100 * r['pass_before']:.1f}% | "
                     f"{100 * r['pass_after']:.1f}% | {r['t_init']:.0f} | {r['t_sft']:.0f} | {r['t_rl']:.0f} | "
                     f"{r['rollout_tps']:.0f} | {r['gap']:.1e} |")
    lines.append("")
    for engine in args.engines:
        gains = [100 * (r["after"] - r["before"]) for r in results if r["engine"] == engine]
        afters = [100 * r["after"] for r in results if r["engine"] == engine]
        lines.append(f"- {engine}: mean gain {sum(gains) / len(gains):+.1f} points (min {min(gains):+.1f}), "
                     f"final greedy accuracy {min(afters):.1f}-{max(afters):.1f}%.")
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))  # noqa: T201 - a benchmark script's report


if __name__ == "__main__":
    main()
