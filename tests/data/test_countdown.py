"""The countdown task (creditrl/data/countdown.py): generator, solver and files (issue #16)."""

from __future__ import annotations

import json
import random

from creditrl.data.countdown import (CountdownSpec, derivations, make_problem, solutions, task_overrides,
                                     write_countdown_task)
from creditrl.rewards.countdown import apply_op, check_solution

SMALL = CountdownSpec(n_numbers=3, max_number=9, max_target=40, max_intermediate=60, n_train=20, n_sft=30,
                      n_eval=10, n_pairs_train=10, n_pairs_eval=5)


def test_apply_op_exact_integer_arithmetic():
    assert apply_op(7, "+", 5) == 12 and apply_op(7, "-", 9) == -2 and apply_op(6, "*", 7) == 42
    assert apply_op(12, "/", 4) == 3
    assert apply_op(12, "/", 5) is None and apply_op(3, "/", 0) is None


def test_solutions_are_found_and_verified():
    sols = solutions([2, 3, 4], 24)
    assert sols == ["3*2=6;6*4=24", "4*2=8;8*3=24", "4*3=12;12*2=24"]
    assert solutions([2, 3, 4], 20) == ["3+2=5;5*4=20"]
    assert all(check_solution(s, [2, 3, 4], 24)[0] for s in sols)
    # every derivation's text reproduces its value under the verifier
    for text, value, _ in derivations([5, 3, 8])[:50]:
        assert check_solution(text, [5, 3, 8], value)[0], text


def test_problems_meet_the_spec():
    rng = random.Random(1)
    rows = [r for r in (make_problem(rng, SMALL) for _ in range(60)) if r]
    assert len(rows) > 10
    for r in rows:
        assert len(r["nums"]) == 3 and all(1 <= x <= 9 for x in r["nums"])
        assert 10 <= r["target"] <= 40 and r["answer"] == str(r["target"])
        assert r["n_solutions"] >= SMALL.min_solutions
        assert r["prompt"] == f"{','.join(map(str, r['nums']))} to {r['target']}:"
        assert check_solution(r["chosen"], r["nums"], r["target"])[0]
        assert check_solution(r["sft_answer"], r["nums"], r["target"])[0] == r["sft_correct"]
        if r["rejected"]:
            assert not check_solution(r["rejected"], r["nums"], r["target"])[0]


def test_files_eval_disjoint_and_loadable(tmp_path):
    out = write_countdown_task(tmp_path / "cd", SMALL, seed=3)
    read = {n: [json.loads(x) for x in (out / "data" / f"{n}.jsonl").read_text().splitlines()]
            for n in ("train", "sft", "eval", "train_pairs", "eval_pairs")}
    assert [len(read[n]) for n in ("train", "sft", "eval")] == [20, 30, 10]
    eval_prompts = {r["prompt"] for r in read["eval"]}
    assert not eval_prompts & {r["prompt"] for r in read["train"] + read["sft"]}
    assert all(set(p) >= {"prompt", "chosen", "rejected", "answer"} for p in read["train_pairs"])
    assert json.loads((out / "data" / "spec.json").read_text())["n_numbers"] == 3
    # same seed, same files
    again = write_countdown_task(tmp_path / "cd2", SMALL, seed=3)
    assert (again / "data" / "eval.jsonl").read_text() == (out / "data" / "eval.jsonl").read_text()


def test_tokenizer_covers_the_task_alphabet():
    from creditrl.models.tiny import ALPHABET

    text = "12,3,7,15 to 41:15-12=3;3*7=21;21+15=36;36/4=9"
    assert set(text) <= set(ALPHABET)


def test_task_overrides_validate_with_a_method_recipe(tmp_path):
    from creditrl.config import load_config

    cfg = load_config("tiny_steer", task_overrides(tmp_path))
    assert cfg.reward.fns[0].name == "countdown" and cfg.rollout.max_new_tokens == 40
    assert cfg.model.path == f"{tmp_path}/sft"
