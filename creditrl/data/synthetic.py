"""A synthetic verifiable task: integer addition with a final numeric answer, and a flawed warm-start corpus.

Rows look like {"prompt": "47+5=", "answer": "52", "sft_answer": "42"}. `answer` is the ground truth the
reward checks. `sft_answer` is what the supervised warm start imitates: for a `buggy_fraction` of the rows it
is the answer of the classic "forgot to carry" procedure (each column's digit sum mod 10), otherwise the true
sum. The warm-started model therefore knows both procedures and is sometimes right, like a base model before
RLVR; RL with a verifiable reward has to select the correct behaviour, which is what RLVR does at scale.
Problems without any carry have the same answer under both procedures.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ArithmeticSpec:
    max_a: int = 99  # first operand in [0, max_a]
    max_b: int = 9  # second operand in [0, max_b]
    buggy_fraction: float = 0.6  # share of warm-start rows that show the no-carry answer
    n_train: int = 20000
    n_eval: int = 200


def add_without_carry(a: int, b: int) -> int:
    """Column-wise (a_i + b_i) mod 10: the answer of someone who forgets to carry."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def make_problem(rng: random.Random, spec: ArithmeticSpec) -> dict[str, str]:
    a, b = rng.randint(0, spec.max_a), rng.randint(0, spec.max_b)
    buggy = rng.random() < spec.buggy_fraction
    shown = add_without_carry(a, b) if buggy else a + b
    return {"prompt": f"{a}+{b}=", "answer": str(a + b), "sft_answer": str(shown)}


def write_arithmetic_task(out_dir: str | Path, spec: ArithmeticSpec = ArithmeticSpec(), seed: int = 0) -> Path:
    """Write train.jsonl and eval.jsonl (disjoint prompts) into `out_dir`; return the directory."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    eval_rows = []
    while len(eval_rows) < spec.n_eval:
        row = make_problem(rng, spec)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            eval_rows.append(row)
    train_rows = []
    while len(train_rows) < spec.n_train:
        row = make_problem(rng, spec)
        if row["prompt"] not in seen:
            train_rows.append(row)
    for name, rows in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows)):
        with open(out / name, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return out


# ---------------------------------------------------------------------------------------------------------
# The same task as chat data, in the two formats users bring: verl parquet and TRL conversational jsonl
# ---------------------------------------------------------------------------------------------------------
CHAT_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def chat_problem(rng: random.Random, spec: ArithmeticSpec) -> tuple[str, int, str]:
    """(question, answer, GSM8K-style solution ending in `#### N`) of one addition word problem."""
    a, b = rng.randint(0, spec.max_a), rng.randint(0, spec.max_b)
    question = f"Tom has {a} apples and gets {b} more. How many apples does he have?"
    return question, a + b, f"{a} + {b} = {a + b}.\n#### {a + b}"


def verl_row(question: str, answer: int, solution: str, split: str, index: int) -> dict:
    """A row as verl's examples/data_preprocess/gsm8k.py writes it: `prompt` is a message list and the gold
    answer sits in `reward_model.ground_truth`."""
    return {"data_source": "synthetic/apples", "prompt": [{"role": "user", "content": f"{question} {CHAT_INSTRUCTION}"}],
            "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(answer)},
            "extra_info": {"split": split, "index": index, "answer": solution, "question": question}}


def trl_row(question: str, answer: int) -> dict:
    """A row of a TRL conversational prompt-only dataset, with the answer in a `solution` column."""
    return {"prompt": [{"role": "user", "content": question}], "solution": str(answer)}


def write_chat_tasks(out_dir: str | Path, n_train: int = 64, n_eval: int = 16, seed: int = 0) -> Path:
    """Write verl_train.parquet / verl_eval.parquet and trl_train.jsonl / trl_eval.jsonl into `out_dir`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, spec = random.Random(seed), ArithmeticSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("eval", n_eval)):
        problems = [chat_problem(rng, spec) for _ in range(n)]
        pq.write_table(pa.Table.from_pylist([verl_row(q, a, s, split, i) for i, (q, a, s) in enumerate(problems)]),
                       out / f"verl_{split}.parquet")
        with open(out / f"trl_{split}.jsonl", "w") as f:
            for q, a, _ in problems:
                f.write(json.dumps(trl_row(q, a)) + "\n")
    return out
