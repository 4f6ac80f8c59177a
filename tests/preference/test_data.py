"""Preference data: arithmetic pairs, loading with configurable fields, pair batches and micro-batches."""

from __future__ import annotations

import json

import pytest
import torch

from creditrl.data import DataError
from creditrl.models.tiny import build_char_tokenizer
from creditrl.learner.pairs import pair_batch, pair_micro_batches
from creditrl.preference.data import arithmetic_pair, load_pairs, write_arithmetic_pairs


@pytest.fixture(scope="module")
def tok():
    t = build_char_tokenizer()
    if t.pad_token_id is None:
        t.pad_token = t.eos_token
    return t


def test_arithmetic_pair_uses_no_carry_answer():
    assert arithmetic_pair("47+5=", "52") == {"prompt": "47+5=", "chosen": "52", "rejected": "42", "answer": "52"}
    assert arithmetic_pair("41+5=", "46") is None  # no carry: both procedures agree
    assert arithmetic_pair("95+7=", "102")["rejected"] == "92"
    with pytest.raises(DataError):
        arithmetic_pair("what is 2+2?", "4")


def test_write_arithmetic_pairs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": "47+5=", "answer": "52"}, {"prompt": "41+5=", "answer": "46"},
            {"prompt": "47+5=", "answer": "52"}, {"prompt": "18+3=", "answer": "21"}]
    for split in ("train", "eval"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_arithmetic_pairs(tmp_path)
    got = [json.loads(x) for x in (data / "train_pairs.jsonl").read_text().splitlines()]
    assert [(g["prompt"], g["chosen"], g["rejected"]) for g in got] == [("47+5=", "52", "42"), ("18+3=", "21", "11")]
    write_arithmetic_pairs(tmp_path, tmp_path / "all", unique=False)
    assert len((tmp_path / "all" / "eval_pairs.jsonl").read_text().splitlines()) == 3


def test_load_pairs_custom_fields_and_errors(tmp_path, tok):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"q": "1+9=", "good": "10", "bad": "0"}) + "\n")
    (pair,) = load_pairs([str(f)], tok, prompt_field="q", chosen_field="good", rejected_field="bad")
    assert pair.prompt == "1+9="
    assert pair.chosen_ids == tuple(tok("10", add_special_tokens=False)["input_ids"]) + (tok.eos_token_id,)
    assert pair.rejected_ids[-1] == tok.eos_token_id and len(pair.rejected_ids) == 2
    with pytest.raises(DataError, match="worse"):
        load_pairs([str(f)], tok, prompt_field="q", chosen_field="good", rejected_field="worse")
    with pytest.raises(DataError):
        load_pairs([str(tmp_path / "missing.jsonl")], tok)


def test_pair_batch_layout(tok, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "47+5=", "chosen": "52", "rejected": "42"}, {"prompt": "95+7=", "chosen": "102", "rejected": "92"}]))
    pairs = load_pairs([str(f)], tok)
    b = pair_batch(pairs, tok.pad_token_id)
    assert len(b) == 4 and b.prompt_keys[0].endswith("/chosen") and b.prompt_keys[2].endswith("/rejected")
    assert b.mask.sum(-1).tolist() == [3.0, 4.0, 3.0, 3.0]  # "52"+EOS, "102"+EOS, "42"+EOS, "92"+EOS
    assert b.response_ids[1, :4].tolist() == list(pairs[1].chosen_ids)
    assert b.response_ids[3, :3].tolist() == list(pairs[1].rejected_ids)
    assert torch.equal(b.group_ids, torch.tensor([0, 1, 0, 1]))


def test_pair_micro_batches_respect_budget(tok, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{i}+9=", "chosen": "1" * (1 + i % 4), "rejected": "2"}) + "\n"
                         for i in range(10, 30)))
    pairs = load_pairs([str(f)], tok)
    groups = pair_micro_batches(pairs, 40)
    assert sorted(i for g in groups for i in g) == list(range(len(pairs)))
    for g in groups:
        longest = max(len(pairs[i].prompt_ids) + max(len(pairs[i].chosen_ids), len(pairs[i].rejected_ids)) for i in g)
        assert 2 * len(g) * longest <= 40 or len(g) == 1
