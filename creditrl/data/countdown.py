"""A synthetic verifiable search task: countdown with a scratchpad, and a flawed warm-start corpus (issue #16).

A prompt gives numbers and a target; the response is a scratchpad of steps `a op b = c` joined by `;`, each step
combining two numbers of the current pool (the given numbers, plus the results of earlier steps) into one, and the
last result must be the target. Every given number is used at most once (multiset semantics: a number given twice
may be used twice). Operations: `+ - * /` on non-negative integers (division only when exact).

    prompt:   "3,7,12,15 to 41:"
    response: "15-12=3;3*7=21;..."     (one solution; most prompts have several)

Why this task (the addition task saturated in 10 steps with 3-token answers): a solution is 2-3 steps, 15-30
character tokens; the first operands and operator of each step are decisive "forking" tokens, the rest is
arithmetic that follows from them; every kept prompt has at least `min_solutions` distinct solutions, so sampling
entropy and pass@k mean something; a tiny model cannot search, so it has to learn good first moves and pass@k at
large k stays well above pass@1.

Rows: {"prompt", "answer": str(target), "nums": [...], "target": int, "n_solutions": int, "sft_answer": str}.
`answer` is what the reward checks (`countdown` reward, creditrl/rewards/countdown.py, reads `nums`/`target`);
`sft_answer` is what the supervised warm start imitates: a correct solution (uniform over all solutions) for a
`correct_fraction` of the rows, otherwise a legal derivation that uses every number with correct arithmetic but
ends at a wrong value. The warm start therefore knows the format and the arithmetic but picks the target-reaching
moves only sometimes: RL with the verifier has to learn them.

Difficulty knobs: `n_numbers` (3 -> 2 steps, 4 -> up to 3 steps), `max_number`, `max_target`, `min_solutions`.

Files (`write_countdown_task`): data/train.jsonl (RL prompts), data/sft.jsonl (the warm-start corpus, a separate
and larger prompt set), data/eval.jsonl (held-out, disjoint from both), data/{train,eval}_pairs.jsonl (preference
pairs: chosen = a correct solution, rejected = a wrong derivation). The verifier is the `countdown` reward
(creditrl/rewards/countdown.py: the data package may not import rewards, docs/architecture.md).

    creditrl tiny init --task countdown      # countdown/data (these files) + countdown/base (the tiny model)
    creditrl sft countdown_grpo              # warm start -> countdown/sft (= sft_overrides('countdown'))
    creditrl train countdown_grpo            # GRPO; any tiny_<method> with task_overrides('countdown')
    python -m creditrl.data.countdown --out countdown --n-numbers 3 ...   # the data files alone, with other knobs
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

OPS = "+-*/"


@dataclass
class CountdownSpec:
    n_numbers: int = 4  # numbers given per prompt (difficulty knob: 3 or 4)
    max_number: int = 15  # each number in [1, max_number]
    max_target: int = 100  # targets in [10, max_target]
    max_intermediate: int = 100  # solutions and warm-start paths keep every intermediate value <= this
    min_solutions: int = 2  # keep only prompts with at least this many distinct solutions
    correct_fraction: float = 0.7  # share of warm-start rows that show a correct solution (measured: greedy 20 %)
    n_train: int = 2000  # RL prompts
    n_sft: int = 20000  # warm-start rows (prompts disjoint from eval)
    n_eval: int = 1000  # held-out prompts
    n_pairs_train: int = 2000  # preference pairs (from the RL prompts)
    n_pairs_eval: int = 200  # held-out preference pairs (from the eval prompts)


# --------------------------------------------------------------------------------------------------------
# Enumerating derivations
# --------------------------------------------------------------------------------------------------------
def _moves(pool: list[int]):
    """Canonical steps on a pool: larger operand first for + and *, positive results for -, exact division by
    b > 1 (x*1, x/1, x-0 style no-op steps are never generated; the verifier still accepts them)."""
    n = len(pool)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = pool[i], pool[j]
            rest = [pool[k] for k in range(n) if k != i and k != j]
            if a > b or (a == b and i < j):
                yield a, "+", b, a + b, rest
                if b > 1:
                    yield a, "*", b, a * b, rest
                if a > b:
                    yield a, "-", b, a - b, rest
                if b > 1 and a % b == 0:
                    yield a, "/", b, a // b, rest


def derivations(nums: list[int], max_value: int = 10_000):
    """Every canonical derivation as (steps text, final value, numbers used up); prefixes included, so solutions
    using a subset of the numbers are found too. Intermediate values above `max_value` are pruned."""
    out = []

    def rec(pool: list[int], steps: list[str], depth: int):
        for a, op, b, c, rest in _moves(pool):
            if c > max_value:
                continue
            s = steps + [f"{a}{op}{b}={c}"]
            out.append((";".join(s), c, depth + 1))
            if rest:
                rec(rest + [c], s, depth + 1)

    rec(list(nums), [], 0)
    return out


def solutions(nums: list[int], target: int) -> list[str]:
    """Distinct canonical solutions (step texts) reaching `target`."""
    return sorted({s for s, v, _ in derivations(nums) if v == target})


def make_problem(rng: random.Random, spec: CountdownSpec) -> dict | None:
    """One problem whose target is reached by a derivation using every number, with >= min_solutions solutions;
    None if the draw does not qualify (the caller draws again)."""
    nums = [rng.randint(1, spec.max_number) for _ in range(spec.n_numbers)]
    derivs = derivations(nums, spec.max_intermediate)
    full = [(s, v) for s, v, d in derivs if d == spec.n_numbers - 1 and 10 <= v <= spec.max_target
            and v not in nums]
    if not full:
        return None
    _, target = rng.choice(full)
    sols = sorted({s for s, v, _ in derivs if v == target})
    if len(sols) < spec.min_solutions:
        return None
    wrong = [s for s, v, d in derivs if d == spec.n_numbers - 1 and v != target]
    correct = rng.random() < spec.correct_fraction or not wrong
    sft = rng.choice(sols) if correct else rng.choice(wrong)
    prompt = f"{','.join(map(str, nums))} to {target}:"
    return {"prompt": prompt, "answer": str(target), "nums": nums, "target": target, "n_solutions": len(sols),
            "sft_answer": sft, "sft_correct": correct, "chosen": rng.choice(sols),
            "rejected": rng.choice(wrong) if wrong else ""}


def _draw(rng: random.Random, spec: CountdownSpec, n: int, seen: set[str], add: bool) -> list[dict]:
    rows: list[dict] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError(f"countdown: could not draw {n} distinct problems with {spec}; loosen the spec "
                               f"(fewer min_solutions, larger max_number / max_target)")
        row = make_problem(rng, spec)
        if row is None or row["prompt"] in seen:
            continue
        if add:
            seen.add(row["prompt"])
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_countdown_task(out_dir: str | Path, spec: CountdownSpec = CountdownSpec(), seed: int = 0) -> Path:
    """Write data/{train,sft,eval,train_pairs,eval_pairs}.jsonl (eval prompts disjoint from train and sft) into
    `out_dir`; return `out_dir`. (The tiny base model is built by the caller: `creditrl.models.tiny.build_tiny_model`,
    which the data package may not import.)"""
    rng = random.Random(seed)
    out = Path(out_dir)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    eval_rows = _draw(rng, spec, spec.n_eval, seen, add=True)
    train_rows = _draw(rng, spec, spec.n_train, seen, add=True)
    sft_rows = _draw(rng, spec, spec.n_sft, seen, add=False)
    _write(data / "eval.jsonl", eval_rows)
    _write(data / "train.jsonl", train_rows)
    _write(data / "sft.jsonl", sft_rows)
    for name, rows, n in (("train_pairs.jsonl", train_rows, spec.n_pairs_train),
                          ("eval_pairs.jsonl", eval_rows, spec.n_pairs_eval)):
        _write(data / name, [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                              "answer": r["answer"], "nums": r["nums"], "target": r["target"]}
                             for r in rows if r["rejected"]][:n])
    (data / "spec.json").write_text(json.dumps({**asdict(spec), "seed": seed}, indent=1) + "\n")
    return out


def task_overrides(task_dir: str | Path) -> list[str]:
    """Recipe overrides that point any `tiny_*` RL recipe at a countdown task directory (its SFT model in sft/)."""
    d = Path(task_dir)
    return [f"model.path={d}/sft", f"data.train_files=[{d}/data/train.jsonl]",
            f"data.eval_files=[{d}/data/eval.jsonl]", "rollout.max_new_tokens=40",
            "reward.fns=[{name: countdown, weight: 1.0}]"]


def sft_overrides(task_dir: str | Path) -> list[str]:
    """Overrides of `creditrl sft tiny_grpo` for a task directory: the warm start on data/sft.jsonl (imitating
    `sft_answer`, tiny_grpo's 1,000 steps of 64 rows), base/ -> sft/, evaluated with the countdown reward."""
    d = Path(task_dir)
    return [f"sft.init_path={d}/base", f"sft.output_path={d}/sft", f"sft.train_files=[{d}/data/sft.jsonl]",
            f"data.train_files=[{d}/data/train.jsonl]", f"data.eval_files=[{d}/data/eval.jsonl]",
            "sft.answer_field=sft_answer", "rollout.max_new_tokens=40", "reward.fns=[{name: countdown, weight: 1.0}]"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the countdown task's data files into --out/data.")
    ap.add_argument("--out", type=Path, default=Path("countdown"))
    ap.add_argument("--seed", type=int, default=0)
    defaults = CountdownSpec()
    for key, value in asdict(defaults).items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = ap.parse_args(argv)
    spec = CountdownSpec(**{k: getattr(args, k) for k in asdict(defaults)})
    write_countdown_task(args.out, spec, args.seed)
    print(f"wrote {args.out}/data ({spec}); the tiny base model: python -c \"from creditrl.models.tiny import "
          f"build_tiny_model; build_tiny_model('{args.out}/base')\"")


if __name__ == "__main__":
    main()
