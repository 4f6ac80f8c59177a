"""Packed groups (`train.pack_groups`, creditrl/learner/batch.py): one row per prompt with its responses back to
back under a block mask gives every response token the context, position and so the log-prob / entropy / gradient
it has in the padded layout."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config

from creditrl.learner.batch import (
    RolloutBatch, make_micro_batch, model_inputs, pack_rows, packing_width, row_cost, scatter_tokens,
)
from creditrl.learner.token_stats import micro_batch_token_stats


def _group_batch() -> RolloutBatch:
    """Two prompts x 3 samples; lengths 3, 1, 0 | 2, 2, 1 (a zero-length response included)."""
    resp = torch.tensor([[7, 8, 9], [4, 0, 0], [0, 0, 0], [5, 6, 0], [6, 5, 0], [9, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0]])
    prompts = [[1, 2], [1, 2], [1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]]
    return RolloutBatch(prompts, resp, mask, torch.zeros(6, 3), torch.zeros(6), torch.tensor([0, 0, 0, 1, 1, 1]),
                        ["a"] * 3 + ["b"] * 3, torch.ones(6, dtype=torch.bool))


def test_packed_layout_hand_computed():
    mb = make_micro_batch(_group_batch(), list(range(6)), pad_id=0, pack_width=10**6)  # huge H: one row a group
    assert mb.input_ids.tolist() == [[1, 2, 7, 8, 9, 4, 0, 0], [3, 4, 5, 5, 6, 6, 5, 9]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 0, 0], [0, 1, 2, 3, 4, 3, 4, 3]]
    allowed = mb.attention_mask[1, 0].int().tolist()  # prompt 3 tokens, then responses of 2, 2, 1
    assert allowed == [[1, 0, 0, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0, 1, 0, 0],
                       [1, 1, 1, 0, 0, 1, 1, 0],
                       [1, 1, 1, 0, 0, 0, 0, 1]]
    assert mb.attention_mask[0, 0, 6:, 6:].int().tolist() == [[1, 0], [0, 1]]  # padding sees itself only
    # token order is the padded layout's; the first token of each response is predicted by the prompt's last state
    assert mb.rows.tolist() == [0, 0, 0, 1, 3, 3, 4, 4, 5]
    assert mb.seq_rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert mb.positions.tolist() == [1, 2, 3, 1, 2, 3, 2, 5, 2]
    assert mb.targets.tolist() == [7, 8, 9, 4, 5, 6, 6, 5, 9]
    for r, t, target in zip(mb.seq_rows.tolist(), mb.positions.tolist(), mb.targets.tolist()):
        later = [p for p in range(t + 1, 8) if mb.attention_mask[r, 0, p, t] and mb.input_ids[r, p] == target]
        assert later, "the predicted token sits at a position that sees the predicting one"
    vals = torch.arange(1.0, 10.0)
    assert scatter_tokens(vals, mb).tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0], [5, 6, 0], [7, 8, 0], [9, 0, 0]]


def test_pack_rows_minimises_the_cost_model():
    lengths = [3, 1, 4, 2]
    for hidden, prompt in [(1, 2), (8, 5), (100, 50), (4, 400)]:
        runs = pack_rows(prompt, lengths, hidden)
        assert [i for run in runs for i in run] == [0, 1, 2, 3]
        brute = min(sum(row_cost(prompt + sum(lengths[a:a + k]), hidden) for a in range(0, 4, k))
                    for k in range(1, 5))
        assert sum(row_cost(prompt + sum(lengths[i] for i in run), hidden) for run in runs) == brute
    assert pack_rows(2, lengths, 1000) == [[0, 1, 2, 3]]  # short rows, wide model: share the prompt
    assert pack_rows(400, [500] * 4, 64) == [[0], [1], [2], [3]]  # long rows: attention^2 would dominate


def _tiny_llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).double()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_matches_padded(attn):
    model = _tiny_llama(attn)
    batch = _group_batch()
    results = {}
    for width in (0, 10**6, 1):  # padded; one packed row per group; the cost model's own choice at H = 1
        model.zero_grad()
        mb = make_micro_batch(batch, list(range(6)), pad_id=0, pack_width=width)
        stats = micro_batch_token_stats(model, mb, 1.0, ("logp", "entropy"))
        (stats["logp"] * torch.arange(1.0, 4.0) + stats["entropy"]).sum().backward()
        results[width] = (stats["logp"].detach(), stats["entropy"].detach(),
                          torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert results[0][0].abs().sum() > 0
    for width in (10**6, 1):  # float64 model; the lm_head statistics kernel accumulates in fp32
        for got, want in zip(results[width], results[0]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    wrong = make_micro_batch(batch, list(range(6)), pad_id=0, pack_width=10**6)
    wrong.attention_mask[:, :, 5, 2:5] = True  # a response that sees its sibling: must change the numbers
    off = micro_batch_token_stats(model, wrong, 1.0, ("logp",))["logp"].detach()
    assert (off - results[0][0]).abs().max() > 1e-3


def test_model_inputs_mask_forms():
    mb = make_micro_batch(_group_batch(), list(range(6)), pad_id=0, pack_width=10**6)
    sdpa, eager = model_inputs(mb, _tiny_llama("sdpa")), model_inputs(mb, _tiny_llama("eager"))
    assert sdpa["attention_mask"].dtype == torch.bool and "position_ids" in sdpa
    assert eager["attention_mask"].dtype == torch.float32
    assert (eager["attention_mask"] == 0).equal(sdpa["attention_mask"])
    padded = make_micro_batch(_group_batch(), list(range(6)), pad_id=0)
    assert set(model_inputs(padded, _tiny_llama("sdpa"))) == {"input_ids", "attention_mask"}


def test_packing_width_falls_back_where_a_custom_mask_is_unsafe():
    assert packing_width(True, _tiny_llama("sdpa"), None) == 32
    assert packing_width(False, _tiny_llama("sdpa")) == 0
    flash = _config_only(LlamaConfig(hidden_size=32, num_attention_heads=4), "flash_attention_2")
    assert packing_width(True, _tiny_llama("sdpa"), flash) == 0
    sliding = Qwen2Config(hidden_size=32, num_attention_heads=4, use_sliding_window=True, sliding_window=8)
    assert packing_width(True, _config_only(sliding, "sdpa")) == 0


def _config_only(config, attn: str) -> torch.nn.Module:
    """A module with only a config (`packing_width` reads nothing else; FlashAttention is not installed here)."""
    module = torch.nn.Module()
    config._attn_implementation_internal = attn
    module.config = config
    return module
