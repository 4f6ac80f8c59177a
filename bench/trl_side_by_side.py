"""creditrl against TRL's GRPOTrainer on identical work, alternating runs on one machine (issue 15).

Same SFT'd tiny model, same training prompts, 32 prompts x 8 samples per step, 6 new tokens at temperature 1,
the same exact-answer reward (creditrl's `numeric_answer` extraction and comparison, called by both), AdamW at the
same settings, warm-up then constant learning rate, one optimizer step per generation (on-policy), no KL term,
one thread each. Each run is a fresh subprocess (peak memory per run); the two sides alternate, the order flipping
every pair. Held-out greedy accuracy is measured by the same creditrl evaluation code for both (TRL through a
callback whose time is excluded), every `--eval-every` steps.

    pip install -e .[crosscheck]   # TRL, for this benchmark only
    python bench/trl_side_by_side.py --model tiny/sft --data tiny/data --pairs 3 --steps 20 [--json out.json]
    python bench/trl_side_by_side.py ... --creditrl-extra train.pack_groups=false   # one creditrl knob off

Step time is measured inside each trainer with the same boundaries: from the start of generation to the end of
the optimizer step (creditrl `timing_s/step`; TRL `on_step_begin` -> `on_step_end`, its generation runs inside
`training_step`). The first two steps of every run are warm-up and left out of the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)

WARMUP_STEPS_SKIPPED = 2

# Every knob of the comparison, both sides: (what, creditrl, TRL).
KNOBS = [
    ("model", "the SFT'd tiny Llama (`creditrl tiny init` + `creditrl sft tiny_grpo`)", "the same directory"),
    ("prompts x samples per step", "train.global_batch_prompts=32, rollout.n_samples=8",
     "per_device_train_batch_size=256, num_generations=8"),
    ("generation", "rollout.max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=0 (HF generate)",
     "max_completion_length=6, temperature=1.0, top_p=1.0, top_k=0 (HF generate)"),
    ("reward", "numeric_answer (exact final answer)", "a function calling creditrl's numeric_answer extraction"),
    ("advantage", "GRPO: (r - group mean) / (group std + eps)", "scale_rewards='group'"),
    ("policy loss", "ppo_clip 0.2 / 0.2 (dual clip 3), token-mean", "epsilon=0.2, loss_type='dapo' (token mean)"),
    ("KL", "none", "beta=0.0"),
    ("updates per step", "ppo_epochs=1, one mini-batch", "num_iterations=1, gradient_accumulation_steps=1"),
    ("optimizer", "AdamW lr=3e-4, betas (0.9, 0.999), eps 1e-8, wd 0, clip 1.0",
     "adamw_torch, learning_rate=3e-4, same betas / eps / wd, max_grad_norm=1.0"),
    ("schedule", "5 warm-up steps ((s+1)/5), then constant", "constant_with_warmup, warmup_steps=5 (s/5)"),
    ("precision", "fp32 (model.autocast_bf16 auto: off at hidden size 128)", "fp32 (bf16=False)"),
    ("threads", "OMP_NUM_THREADS=1, torch.set_num_threads(1)", "the same"),
    ("evaluation", "creditrl evaluate_task, greedy, 200 held-out prompts", "the same function on TRL's model"),
]


def _overrides(model: str, data: str, seed: int, steps: int, eval_every: int) -> list[str]:
    return [f"model.path={model}", f"data.train_files=[{data}/train.jsonl]", f"data.eval_files=[{data}/eval.jsonl]",
            f"seed={seed}", f"train.steps={steps}", f"eval.every_steps={eval_every}", "eval.max_prompts=200",
            "eval.pass_k=0", "logging.progress=false", "logging.samples_every=0", "checkpoint.every_steps=0"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_creditrl(args, out: Path) -> dict:
    from creditrl.config import load_config
    from creditrl.trainer.loop import train

    cfg = load_config("tiny_grpo", _overrides(args.model, args.data, args.seed, args.steps, args.eval_every)
                      + [f"output_dir={out}", *args.creditrl_extra])
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["timing_s/step"] for r in rows if "timing_s/step" in r]
    parts = {key: [r.get(f"timing_s/{name}", 0.0) for r in rows if "timing_s/step" in r]
             for key, name in (("generate_only_s", "gen"), ("reward_s", "reward"), ("update_s", "update_actor"))}
    parts["gen_s"] = [g + r for g, r in zip(parts["generate_only_s"], parts["reward_s"])]
    evals = {int(r["step"]): r["eval/greedy_acc"] for r in rows if "eval/greedy_acc" in r}
    final = next((r["final/greedy_acc"] for r in rows if "final/greedy_acc" in r), None)
    if final is not None:
        evals[args.steps] = final
    return {"step_s": steps, "evals": evals, "wall_s": wall, **parts}


def timed(fn, times: list[float]):
    """`fn` that appends the seconds of each call to `times` (TRL's generation + scoring share of a step)."""

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            times.append(time.perf_counter() - t0)

    return wrapper


def run_trl(args, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from creditrl.config import load_config
    from creditrl.rewards.manager import RewardManager
    from creditrl.rewards.numeric import answers_match, extract_answer
    from creditrl.rollout.hf_engine import HFGenerateEngine
    from creditrl.trainer.evaluate import evaluate_task
    from creditrl.trainer.loop import load_run_data

    cfg = load_config("tiny_grpo", _overrides(args.model, args.data, args.seed, args.steps, args.eval_every)
                      + [f"output_dir={out}"])
    tokenizer, _, eval_data, _ = load_run_data(cfg)
    rows = [json.loads(x) for x in Path(args.data, "train.jsonl").read_text().splitlines() if x.strip()]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows])

    def numeric_answer(completions, answer, **_):
        out = []
        for c, a in zip(completions, answer):
            pred = extract_answer(c)
            out.append(1.0 if pred is not None and answers_match(pred, a) else 0.0)
        return out

    model = AutoModelForCausalLM.from_pretrained(args.model)
    rewards = RewardManager.from_config(cfg.reward)
    result: dict = {"step_s": [], "evals": {}}

    class Timing(TrainerCallback):
        def __init__(self):
            self.t0 = 0.0

        def _eval(self, step: int, trainer_model) -> None:
            engine = HFGenerateEngine(trainer_model, tokenizer.pad_token_id, tokenizer.eos_token_id)
            result["evals"][step] = evaluate_task(cfg, engine, eval_data, rewards, tokenizer, "eval")["eval/greedy_acc"]

        def on_train_begin(self, targs, state, control, model=None, **kw):
            self._eval(0, model)

        def on_step_begin(self, targs, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, targs, state, control, model=None, **kw):
            result["step_s"].append(time.perf_counter() - self.t0)
            if state.global_step % args.eval_every == 0 or state.global_step == args.steps:
                self._eval(state.global_step, model)

    targs = GRPOConfig(
        output_dir=str(out), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=args.seed,
        per_device_train_batch_size=256, num_generations=8, gradient_accumulation_steps=1, max_steps=args.steps,
        max_completion_length=6, temperature=1.0, top_p=1.0, top_k=0, learning_rate=3e-4,
        lr_scheduler_type="constant_with_warmup", warmup_steps=5, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, beta=0.0, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", num_iterations=1, bf16=False, dataloader_num_workers=0, disable_dropout=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[numeric_answer], args=targs, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Timing()])
    result["gen_s"], result["generate_only_s"] = [], []
    for name, key in (("_generate_and_score_completions", "gen_s"), ("_generate", "generate_only_s")):
        setattr(trainer, name, timed(getattr(trainer, name), result[key]))
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    trainer.train()
    result["wall_s"] = time.perf_counter() - t0
    rewards.close()
    return result


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        res = (run_creditrl if args.worker == "creditrl" else run_trl)(args, Path(tmp) / "run")
    res["peak_rss_mib"] = peak_rss_mib()
    Path(args.result).write_text(json.dumps(res))


def time_to_accuracy(step_s: list[float], evals: dict[int, float], target: float) -> float | None:
    """Summed step time up to the first evaluation at or above `target` (None: never reached)."""
    for step in sorted(evals):
        if evals[step] >= target:
            return sum(step_s[:step])
    return None


def launch(side: str, args, tmp: Path, pair: int) -> dict:
    """One run in a fresh process; pair i uses seed `args.seeds[i % len(args.seeds)]` on both sides."""
    result = tmp / f"{side}-{pair}.json"
    seed = args.seeds[pair % len(args.seeds)]
    cmd = [sys.executable, __file__, "--worker", side, "--result", str(result), "--model", args.model,
           "--data", args.data, "--seed", str(seed), "--steps", str(args.steps),
           "--eval-every", str(args.eval_every), "--creditrl-extra", *args.creditrl_extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    res = json.loads(result.read_text())
    res["evals"] = {int(step): acc for step, acc in res["evals"].items()}  # JSON keys are strings
    res["median_step_s"] = statistics.median(res["step_s"][WARMUP_STEPS_SKIPPED:])
    for part in ("gen_s", "generate_only_s"):  # generation (+ reward) and the rest of the step
        res[f"median_{part}"] = statistics.median(res[part][WARMUP_STEPS_SKIPPED:])
    res["tta_s"] = time_to_accuracy(res["step_s"], res["evals"], args.target_acc)
    res["seed"] = seed
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny/sft")
    ap.add_argument("--data", default="tiny/data")
    ap.add_argument("--pairs", type=int, default=3, help="alternating (creditrl, TRL) pairs")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed of pair i: seeds[i % len]")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a worker's own seed
    ap.add_argument("--target-acc", type=float, default=0.9, help="held-out greedy accuracy for time-to-accuracy")
    ap.add_argument("--creditrl-extra", nargs="*", default=[], help="extra creditrl overrides (key=value)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", choices=["creditrl", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            order = ("creditrl", "trl") if pair % 2 == 0 else ("trl", "creditrl")
            res = {side: launch(side, args, Path(tmp), pair) for side in order}
            runs.append(res)
            print(f"pair {pair}: creditrl {res['creditrl']['median_step_s']:.3f} s/step, "
                  f"TRL {res['trl']['median_step_s']:.3f} s/step, "
                  f"ratio {res['creditrl']['median_step_s'] / res['trl']['median_step_s']:.2f}", flush=True)
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}; 1-min load at the end "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| knob | creditrl | TRL 1.16 GRPOTrainer |\n|---|---|---|")
    for knob, ours, theirs in KNOBS:
        print(f"| {knob} | {ours} | {theirs} |")
    if args.creditrl_extra:
        print(f"| creditrl overrides of this run | {' '.join(args.creditrl_extra)} | |")
    print(f"\n| pair | seed | side | median s/step | generate s | generate + reward s | rest (update) s | greedy acc step 0 | step {args.eval_every} | step {args.steps} "
          f"| time to {args.target_acc:.0%} (s of steps) | peak RSS MiB | ratio creditrl/TRL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, res in enumerate(runs):
        ratio = res["creditrl"]["median_step_s"] / res["trl"]["median_step_s"]
        for side in ("creditrl", "trl"):
            r = res[side]
            tta = "not reached" if r["tta_s"] is None else f"{r['tta_s']:.2f}"
            accs = [r["evals"].get(s) for s in (0, args.eval_every, args.steps)]
            print(f"| {i} | {r['seed']} | {side} | {r['median_step_s']:.3f} | {r['median_generate_only_s']:.3f} "
                  f"| {r['median_gen_s']:.3f} | {r['median_step_s'] - r['median_gen_s']:.3f} | " + " | ".join(
                "n/a" if a is None else f"{a:.1%}" for a in accs) + f" | {tta} | {r['peak_rss_mib']:.0f} | "
                f"{ratio:.2f} |")
    ratios = [r["creditrl"]["median_step_s"] / r["trl"]["median_step_s"] for r in runs]
    print(f"\nstep-time ratio creditrl/TRL: median {statistics.median(ratios):.2f} "
          f"(pairs {min(ratios):.2f}-{max(ratios):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
