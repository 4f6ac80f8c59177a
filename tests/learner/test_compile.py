"""`model.compile`: the learner's decoder body through torch.compile gives the eager numbers."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from creditrl.config import load_config
from creditrl.learner.batch import RolloutBatch, make_micro_batch
from creditrl.learner.token_stats import compiled_decoder, micro_batch_token_stats


def test_compile_is_refused_with_zero3():
    with pytest.raises(ValueError, match="model.compile does not work with resources.zero_stage=3"):
        load_config("tiny_grpo_ray_zero3", ["model.compile=true"])
    assert load_config("tiny_grpo_ray", ["model.compile=true"]).model.compile  # ZeRO-2: fine


@pytest.mark.slow  # torch.compile of even a 2-layer model takes ~20-60 s on 2 CPU cores
def test_compiled_decoder_matches_eager_and_shares_parameters():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    keys = set(model.state_dict())
    decoder = compiled_decoder(model)
    assert set(model.state_dict()) == keys  # checkpoints and weight sync see the same names
    resp = torch.tensor([[7, 8, 9], [4, 0, 0], [5, 6, 0], [6, 5, 0]])
    mask = (resp > 0).float()
    batch = RolloutBatch([[1, 2], [1, 2], [3, 4, 5], [3, 4, 5]], resp, mask, torch.zeros(4, 3), torch.zeros(4),
                         torch.tensor([0, 0, 1, 1]), ["a", "a", "b", "b"], torch.ones(4, dtype=torch.bool))
    for width in (0, 32):  # padded rows and packed groups (different shapes: dynamic)
        mb = make_micro_batch(batch, [0, 1, 2, 3], pad_id=0, pack_width=width)
        grads = []
        for dec in (None, decoder):
            model.zero_grad()
            stats = micro_batch_token_stats(model, mb, 1.0, ("logp", "entropy"), decoder=dec)
            (stats["logp"].sum() + stats["entropy"].sum()).backward()
            grads.append((stats["logp"].detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-5)
