"""The samples table rows (creditrl/trainer/samples.py) from a hand-built RolloutBatch."""

from __future__ import annotations

import pytest
import torch

from creditrl.learner.batch import RolloutBatch
from creditrl.trainer.samples import row_advantages, sample_rows, table


class CharTokenizer:
    """ids are character codes; 0 is padding / a special token (dropped by skip_special_tokens)."""

    def batch_decode(self, seqs, skip_special_tokens=False):
        return ["".join(chr(i) for i in s if not (skip_special_tokens and i == 0)) for s in seqs]


def _batch(advantages=None) -> RolloutBatch:
    resp = torch.tensor([[ord("4"), ord("2"), 0], [ord("7"), 0, 0], [ord("1"), ord("0"), ord("0")]])
    mask = (resp != 0).float()
    mask[2] = 1.0
    return RolloutBatch(
        prompt_ids=[[ord(c) for c in "6*7="], [ord(c) for c in "6*7="], [ord(c) for c in "9+1="]],
        response_ids=resp, mask=mask, rollout_logprobs=torch.zeros(3, 3),
        rewards=torch.tensor([1.5, 0.0, 1.0]), group_ids=torch.tensor([5_000_003, 5_000_003, 5_000_004]),
        prompt_keys=["a", "a", "b"], finished=torch.tensor([True, True, False]),
        reward_components=torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
        reward_weights=torch.tensor([1.0, 0.5]), advantages=advantages)


def test_rows():
    adv = torch.tensor([[1.0, 3.0, 9.0], [-2.0, 7.0, 7.0], [0.5, 0.5, 0.5]])  # padding positions must not count
    rows = sample_rows(_batch(adv), CharTokenizer(), ["correct", "format"], k=2)
    assert rows == [
        {"prompt": "6*7=", "completion": "42", "reward": 1.5, "reward/correct": 1.0, "reward/format": 1.0,
         "advantage": 2.0, "response_length": 2, "finished": True, "group": 0},
        {"prompt": "6*7=", "completion": "7", "reward": 0.0, "reward/correct": 0.0, "reward/format": 0.0,
         "advantage": -2.0, "response_length": 1, "finished": True, "group": 0},
    ]
    third = sample_rows(_batch(adv), CharTokenizer(), ["correct", "format"], k=10)[2]
    assert third["completion"] == "100" and third["response_length"] == 3 and third["finished"] is False
    assert third["group"] == 1 and third["advantage"] == pytest.approx(0.5)


def test_row_advantages_sequence_level_and_missing():
    b = _batch(torch.tensor([0.25, -1.0, 2.0]))
    assert row_advantages(b) == [0.25, -1.0, 2.0]
    assert row_advantages(_batch(None)) == [None, None, None]
    assert sample_rows(_batch(None), CharTokenizer(), ["correct", "format"], 1)[0]["advantage"] is None


def test_table_columns_are_the_union_in_order():
    cols, data = table([{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    assert cols == ["a", "b", "c"] and data == [[1, 2, None], [3, None, 4]]
