"""Data-parallel plan: balanced by tokens, every row once, lockstep micro-batch counts."""

import pytest

from creditrl.learner.dp_split import balance_rows, plan_step


def test_balance_rows_hand_case():
    # lengths 9, 7, 5, 3, 1 over 2 ranks, LPT: 9->A, 7->B, 5->B (7<9), 3->A (9<12), 1->A (12 = 12 tokens and
    # 2 = 2 rows: the lower rank wins the tie)
    lengths = [9, 7, 5, 3, 1]
    a, b = balance_rows(list(range(5)), lengths, 2)
    assert a == [0, 3, 4] and b == [1, 2]
    assert sum(lengths[r] for r in a) == 13 and sum(lengths[r] for r in b) == 12


def test_balance_rows_more_ranks_than_rows():
    assert balance_rows([0, 1], [5, 5], 3) == [[0], [1], []]
    with pytest.raises(ValueError):
        balance_rows([0], [1], 0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_plan_step_covers_every_row_once_and_is_lockstep(world):
    lengths = [3 + (i * 7) % 11 for i in range(20)]
    plans = plan_step(lengths, mini_batch_rows=8, world=world, micro_budget=30)
    assert [p.rows for p in plans] == [tuple(range(0, 8)), tuple(range(8, 16)), tuple(range(16, 20))]
    for p in plans:
        depths = {len(m) for m in p.micro}
        assert len(depths) == 1  # same number of forward/backward calls on every rank
        real = sorted(r for m in p.micro for spec in m if spec.real for r in spec.rows)
        assert real == list(p.rows)
        for m in p.micro:
            for spec in m:
                assert max(lengths[r] for r in spec.rows) * len(spec.rows) <= 30 or len(spec.rows) == 1


def test_plan_step_pads_ranks_without_rows():
    plans = plan_step([4, 4, 4], mini_batch_rows=1, world=2, micro_budget=100)
    for p in plans:
        (a,), (b,) = p.micro
        assert a.real and not b.real and b.rows == p.rows  # the idle rank replays a row with zero loss
    with pytest.raises(ValueError):
        plan_step([1], mini_batch_rows=0, world=1, micro_budget=10)
