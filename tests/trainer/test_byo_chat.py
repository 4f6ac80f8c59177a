"""Acceptance of issue 13: a chat model (byte-level BPE tokenizer, ChatML template, two end tokens) trained 2
steps on (a) a verl-format parquet file and (b) a TRL conversational jsonl, with a TRL-style reward function that
reads a dataset column. Checked: the prompts the model saw, that generation stopped at the end token that only
the model's generation_config declares, and what the reward functions received.

The model is the tiny chat model of `creditrl tiny chat`, rewired into a bigram model (attention and MLP outputs
zeroed, so the logits depend on the last token only) whose answer after the generation prompt is
"The answer is 5" or "The answer is 7" with equal probability, then `<|im_end|>`. After `<|im_end|>` nothing is
wired: an engine that ignored that end token would run on to max_new_tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from creditrl.cli import app
from creditrl.data.synthetic import trl_row, verl_row
from creditrl.models.tiny import build_tiny_chat_model
from tests.distributed.conftest import local_ray  # noqa: F401  (fixture, for the Ray cases)

SYSTEM = "Answer with the number only."
QUESTIONS = [(f"Tom has {a} apples and gets {b} more. How many apples does he have?", a + b)
             for a, b in [(2, 3), (4, 3), (1, 4), (5, 2), (3, 2), (6, 1), (0, 5), (2, 5)]]
MAX_NEW = 12

REWARDS_PY = '''
import json


def accuracy(prompts, completions, solution, log, **kwargs):
    """TRL's accuracy_reward shape, recording what it was given."""
    with open(log, "a") as f:
        f.write(json.dumps({"prompts": prompts, "completions": completions, "solution": solution,
                            "completion_ids": kwargs["completion_ids"],
                            "columns": sorted(k for k in kwargs if k != "completion_ids")}) + "\\n")
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if t.split()[-1:] == [s] else 0.0 for t, s in zip(texts, solution)]


def ground_truth(prompts, completions, reward_model, log, **kwargs):
    """verl's nested column: reward_model.ground_truth."""
    with open(log, "a") as f:
        f.write(json.dumps({"prompts": prompts, "reward_model": reward_model,
                            "completion_ids": kwargs["completion_ids"], "columns": sorted(kwargs)}) + "\\n")
    texts = [c[0]["content"] for c in completions]
    return [1.0 if t.split()[-1:] == [rm["ground_truth"]] else 0.0 for t, rm in zip(texts, reward_model)]


def seen(sample, log):
    """Per-sample: the prompt text the model saw."""
    with open(log, "a") as f:
        f.write(json.dumps({"prompt": sample.prompt, "answer": sample.answer}) + "\\n")
    return 0.0
'''


def wire_bigram(model_dir: Path, edges: dict[int, list[int]], alpha: float = 2.0) -> None:
    """Make `model_dir` a bigram model: logits(x) = W @ rmsnorm(E[x]); W[b] += alpha * rmsnorm(E[a]) per edge."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        normed = emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)
        for a, targets in edges.items():
            for b in targets:
                model.lm_head.weight[b] += alpha * normed[a]
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> tuple[Path, dict]:
    from transformers import AutoTokenizer

    path = build_tiny_chat_model(tmp_path_factory.mktemp("chat") / "model")
    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    last = tok(prompt, add_special_tokens=False)["input_ids"][-1]
    words = tok("The answer is", add_special_tokens=False)["input_ids"] + tok(" ", add_special_tokens=False)["input_ids"]
    five, seven = (tok.convert_tokens_to_ids(d) for d in ("5", "7"))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    chain = [last, *words]
    assert len(set(chain)) == len(chain) and not {five, seven, im_end} & set(chain)
    edges = {a: [b] for a, b in zip(chain, chain[1:])}
    edges[chain[-1]] = [five, seven]
    edges[five] = [im_end]
    edges[seven] = [im_end]
    wire_bigram(path, edges)
    assert tok.eos_token == "<|endoftext|>"  # <|im_end|> is an end token only through generation_config
    return path, {"im_end": im_end, "eos": tok.eos_token_id, "tok": tok}


def write_data(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(q, a, f"{a}.\n#### {a}") for q, a in QUESTIONS]
    pq.write_table(pa.Table.from_pylist([verl_row(q, a, s, "train", i) for i, (q, a, s) in enumerate(rows)]),
                   root / "verl.parquet")
    (root / "trl.jsonl").write_text("".join(json.dumps(trl_row(q, a)) + "\n" for q, a, _ in rows))


def recipe(root: Path, model: Path, fmt: str, extra: dict | None = None) -> Path:
    log = str(root / f"{fmt}_batch.jsonl")
    seen = {"name": "custom", "function": f"{root}/rewards.py:seen", "weight": 0.0,
            "kwargs": {"log": str(root / f"{fmt}_seen.jsonl")}}
    if fmt == "verl":
        data = {"train_files": [str(root / "verl.parquet")], "answer_field": "reward_model.ground_truth"}
        fn = {"name": "custom", "function": f"{root}/rewards.py:ground_truth", "kwargs": {"log": log}}
    else:
        data = {"train_files": [str(root / "trl.jsonl")], "answer_field": "solution"}
        fn = {"name": "custom", "function": f"{root}/rewards.py:accuracy", "kwargs": {"log": log}}
    cfg = {
        "extends": "tiny_grpo", "name": f"byo-{fmt}", "output_dir": str(root / f"run_{fmt}"),
        "model": {"path": str(model)},
        "data": {**data, "eval_files": [], "eval_fraction": 0.25, "system_prompt": SYSTEM, "max_prompt_tokens": 256},
        "rollout": {"n_samples": 4, "max_new_tokens": MAX_NEW},
        "reward": {"fns": [fn, seen], "executor": "serial", "timeout_s": None},
        "train": {"steps": 2, "global_batch_prompts": 2, "warmup_steps": 0},
        "eval": {"max_prompts": 2, "pass_k": 0},
        "logging": {"progress": False},
    }
    for section, values in (extra or {}).items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = root / f"{fmt}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_run(root: Path, fmt: str, ends: dict) -> None:
    tok = ends["tok"]
    answers = {str(a) for _, a in QUESTIONS}
    questions = {q: a for q, a in QUESTIONS}
    # (1) the prompts the model saw: ChatML with the recipe's system prompt, then the dataset's user turn
    seen = read(root / f"{fmt}_seen.jsonl")
    assert seen, "the per-sample reward never ran"
    for s in seen:
        q = next(q for q in questions if q in s["prompt"])
        user = q if fmt == "trl" else f"{q} Let's think step by step and output the final answer after \"####\"."
        assert s["prompt"] == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                               f"<|im_start|>assistant\n")
        assert s["answer"] == str(questions[q])  # the gold answer from the mapped (nested) field, not a dict string
    # (2) what the TRL-style reward received, and (3) generation stopped at <|im_end|>
    calls = read(root / f"{fmt}_batch.jsonl")
    assert len(calls) >= 2  # one call per training step (plus evaluation)
    texts = set()
    for call in calls:
        n = len(call["prompts"])
        for messages in call["prompts"]:
            assert messages[0] == {"role": "system", "content": SYSTEM} and messages[1]["role"] == "user"
            assert messages[1]["content"].split(" Let's")[0] in questions
        if fmt == "trl":
            assert len(call["solution"]) == n and set(call["solution"]) <= answers
            assert "prompt" not in call["columns"]  # TRL passes no prompt column (solution is declared)
            for messages, sol in zip(call["prompts"], call["solution"]):
                assert sol == str(questions[messages[1]["content"]])
        else:
            assert {"data_source", "extra_info", "ability"} <= set(call["columns"])  # reward_model is declared
            assert all(rm["style"] == "rule" and rm["ground_truth"] in answers for rm in call["reward_model"])
        for ids in call["completion_ids"]:
            assert ids[-1] == ends["im_end"] and ends["im_end"] not in ids[:-1], tok.convert_ids_to_tokens(ids)
            assert len(ids) < MAX_NEW
            texts.add(tok.decode(ids, skip_special_tokens=True))
        if fmt == "trl":
            for c in call["completions"]:
                assert len(c) == 1 and c[0]["role"] == "assistant"
    assert texts == {"The answer is 5", "The answer is 7"}
    metrics = read(root / f"run_{fmt}" / "metrics.jsonl")
    steps = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["response/truncated_frac"] == 0.0 and m["response/length_mean"] == 6 for m in steps)


CASES = [  # (data format, backend): one Ray + vLLM case in the default suite, the rest of the matrix is slow
    pytest.param("verl", "local_hf", id="verl-local_hf"),
    pytest.param("trl", "local_hf", id="trl-local_hf"),
    pytest.param("trl", "ray_vllm", id="trl-ray_vllm"),
    pytest.param("verl", "ray_hf", id="verl-ray_hf", marks=pytest.mark.slow),
    pytest.param("verl", "local_vllm", id="verl-local_vllm", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("fmt, backend", CASES)
def test_chat_model_trains_on_verl_and_trl_data(chat_model, tmp_path, fmt, backend, request):
    from tests.parity.conftest import BACKENDS, vllm_unavailable_reason

    if "vllm" in backend and (reason := vllm_unavailable_reason()):
        pytest.skip(reason)
    if backend.startswith("ray"):
        request.getfixturevalue("local_ray")
    model, ends = chat_model
    write_data(tmp_path)
    (tmp_path / "rewards.py").write_text(REWARDS_PY)
    result = CliRunner().invoke(app, ["train", str(recipe(tmp_path, model, fmt)), *BACKENDS[backend]])
    assert result.exit_code == 0, result.output
    check_run(tmp_path, fmt, ends)
