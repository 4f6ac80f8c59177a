import json

import pytest

from creditrl.config.schema import DataConfig
from creditrl.data import DataError, PromptSampler, load_prompt_datasets
from creditrl.data.synthetic import ArithmeticSpec, add_without_carry, write_arithmetic_task
from creditrl.models.tiny import build_char_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def rows_file(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_synthetic_task_is_disjoint_and_correct(tmp_path):
    d = write_arithmetic_task(tmp_path, ArithmeticSpec(n_train=300, n_eval=50), seed=3)
    train = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
    ev = [json.loads(x) for x in (d / "eval.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in ev})
    for r in train + ev:
        a, b = map(int, r["prompt"][:-1].split("+"))
        assert int(r["answer"]) == a + b
        assert r["sft_answer"] in (str(a + b), str(add_without_carry(a, b)))
    assert add_without_carry(47, 5) == 42 and add_without_carry(99, 9) == 98 and add_without_carry(12, 3) == 15


def test_load_jsonl_and_parquet_with_custom_fields(tmp_path, tok):
    import pandas as pd

    rows = [{"q": f"{i}+1=", "a": str(i + 1)} for i in range(10)]
    pq = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    cfg = DataConfig(train_files=[str(rows_file(tmp_path, rows))], eval_files=[str(pq)], prompt_field="q",
                     answer_field="a", template="Q: {prompt}")
    train, ev = load_prompt_datasets(cfg, tok, seed=0)
    assert len(train) == 10 and len(ev) == 10
    assert train[3].prompt == "Q: 3+1=" and ev[3].answer == "4"
    assert tok.decode(list(train[3].prompt_ids)) == "Q: 3+1="


def test_split_when_no_eval_files(tmp_path, tok):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    cfg = DataConfig(train_files=[str(rows_file(tmp_path, rows))], eval_files=[], eval_fraction=0.25)
    train, ev = load_prompt_datasets(cfg, tok, seed=0)
    assert len(ev) == 5 and len(train) == 15
    assert {r.key for r in train}.isdisjoint({r.key for r in ev})


def test_missing_file_empty_file_missing_field(tmp_path, tok):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        load_prompt_datasets(DataConfig(train_files=[str(tmp_path / "nope.jsonl")], eval_files=[]), tok, 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl is empty"):
        load_prompt_datasets(DataConfig(train_files=[str(empty)], eval_files=[]), tok, 0)
    bad = rows_file(tmp_path, [{"question": "1+1=", "answer": "2"}] * 3)
    with pytest.raises(DataError) as e:
        load_prompt_datasets(DataConfig(train_files=[str(bad)], eval_files=[]), tok, 0)
    assert "no field 'prompt'" in str(e.value) and "question" in str(e.value) and "data.prompt_field" in str(e.value)


def test_sampler_epochs_and_resume():
    s = PromptSampler(5, seed=1)
    first = s.next_indices(3) + s.next_indices(3)  # crosses the epoch boundary
    assert sorted(first[:5]) == list(range(5)) and s.epoch == 1
    state = s.state_dict()
    rest = s.next_indices(7)
    s2 = PromptSampler(5, seed=1)
    s2.load_state_dict(state)
    assert s2.next_indices(7) == rest
    with pytest.raises(ValueError, match="same data files"):
        PromptSampler(6, seed=1).load_state_dict(state)
