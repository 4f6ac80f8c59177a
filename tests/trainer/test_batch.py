import torch

from creditrl.learner.batch import RolloutBatch, make_micro_batch, partition_by_tokens, scatter_tokens
from creditrl.models.schedule import lr_factor


def test_partition_respects_budget_and_order():
    lengths = [5, 5, 5, 9, 2, 2, 20, 1]
    groups = partition_by_tokens(lengths, budget=12)
    assert [i for g in groups for i in g] == list(range(len(lengths)))  # order kept, nothing lost
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 12
    assert [6] in groups  # longer than the budget: alone
    assert partition_by_tokens(lengths, 12) == groups  # deterministic


def _batch() -> RolloutBatch:
    resp = torch.tensor([[7, 8, 9], [4, 0, 0], [5, 6, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 0]])
    return RolloutBatch([[1, 2], [3], [1, 2, 3, 4]], resp, mask, torch.zeros(3, 3), torch.zeros(3),
                        torch.arange(3), ["a", "b", "c"], torch.ones(3, dtype=torch.bool))


def test_micro_batch_alignment_hand_computed():
    mb = make_micro_batch(_batch(), [0, 1, 2], pad_id=0)
    assert mb.input_ids.tolist() == [[1, 2, 7, 8, 9, 0], [3, 4, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    # token t of sample i is predicted by position prompt_len + t - 1
    assert mb.rows.tolist() == [0, 0, 0, 1, 2, 2]
    assert mb.positions.tolist() == [1, 2, 3, 0, 3, 4]
    assert mb.targets.tolist() == [7, 8, 9, 4, 5, 6]
    for r, p, t in zip(mb.rows, mb.positions, mb.targets):
        assert mb.input_ids[r, p + 1] == t


def test_scatter_tokens_places_values_and_keeps_grad():
    mb = make_micro_batch(_batch(), [0, 1, 2], pad_id=0)
    vals = torch.arange(1.0, 7.0, requires_grad=True)
    out = scatter_tokens(vals, mb)
    assert out.tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    out.sum().backward()
    assert vals.grad.tolist() == [1.0] * 6


def test_lr_schedule_values():
    assert lr_factor(0, 100, 10, "constant", 0.0) == 0.1  # warm-up (step+1)/warmup
    assert lr_factor(9, 100, 10, "constant", 0.0) == 1.0
    assert lr_factor(55, 100, 10, "linear", 0.0) == 0.5  # halfway through the decay
    assert abs(lr_factor(100, 100, 10, "cosine", 0.1) - 0.1) < 1e-12
    assert abs(lr_factor(55, 100, 10, "cosine", 0.0) - 0.5) < 1e-12


def test_per_function_rewards_follow_their_rows_through_prompt_selection():
    """The batch's reward_components rows stay aligned with its rewards when dynamic sampling keeps a subset."""
    from types import SimpleNamespace

    from creditrl.rollout.base import RolloutOutput
    from creditrl.trainer.loop import _row_rewards, _select_prompts, build_batch

    out = RolloutOutput([[1], [1], [2], [2]], [[5], [6], [7], [8]], [[-0.1], [-0.2], [-0.3], [-0.4]],
                        [True] * 4, [0, 0, 1, 1])
    comps = {"acc": [1.0, 0.0, 0.0, 1.0], "fmt": [0.5, 0.25, 1.0, 0.0]}
    weights = {"acc": 1.0, "fmt": 0.2}
    rb = SimpleNamespace(scores=[sum(weights[k] * comps[k][i] for k in comps) for i in range(4)], components=comps)
    sel, rows = _select_prompts(out, _row_rewards(rb, ["acc", "fmt"]), keep=[1], n=2)
    prompts = [SimpleNamespace(key="p1")]
    batch = build_batch(sel, prompts, [s for s, _ in rows], pad_id=0, group_offset=0,
                        components=[c for _, c in rows], weights=[weights["acc"], weights["fmt"]])
    assert batch.response_ids[:, 0].tolist() == [7, 8]
    assert batch.reward_components.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    torch.testing.assert_close(batch.rewards, batch.reward_components @ batch.reward_weights)
