import pytest
import torch

from creditrl.models.tiny import build_tiny_model
from creditrl.rollout.base import RolloutOutput, SamplingParams
from creditrl.rollout.hf_engine import HFGenerateEngine


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("m"), seed=1)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_sample_order_shapes_and_sampler_logprobs(model_and_tok):
    model, tok = model_and_tok
    engine = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id, batch_prompts=2)
    prompts = [tok("12+3=").input_ids, tok("1+1=").input_ids, tok("99+9=").input_ids]
    torch.manual_seed(0)
    out = engine.generate(prompts, SamplingParams(n=3, temperature=0.7, max_new_tokens=5))
    assert out.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # chunks of 2 prompts re-indexed in order
    assert [out.prompt_ids[k] for k in (0, 3, 6)] == prompts
    for r, lp, fin in zip(out.response_ids, out.logprobs, out.finished):
        assert len(r) == len(lp) and 1 <= len(r) <= 5
        assert fin == (r[-1] == tok.eos_token_id) and tok.eos_token_id not in r[:-1]
    # independent float64 reference: full forward, logits / T, log-softmax, gather
    for k in range(len(out)):
        ids = torch.tensor([out.prompt_ids[k] + out.response_ids[k]])
        with torch.no_grad():
            logits = model(ids).logits[0].double() / 0.7
        ref = torch.log_softmax(logits, -1)
        p = len(out.prompt_ids[k])
        expect = [ref[p - 1 + t, tok_id].item() for t, tok_id in enumerate(out.response_ids[k])]
        assert out.logprobs[k] == pytest.approx(expect, abs=1e-4)


def test_greedy_is_argmax_and_deterministic(model_and_tok):
    model, tok = model_and_tok
    engine = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id)
    prompts = [tok("5+5=").input_ids, tok("10+20=").input_ids]
    a = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
    b = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
    assert a.response_ids == b.response_ids
    ids = list(prompts[0])
    with torch.no_grad():
        for tok_id in a.response_ids[0]:
            nxt = model(torch.tensor([ids])).logits[0, -1].argmax().item()
            assert nxt == tok_id
            ids.append(nxt)


def test_padded_and_version():
    out = RolloutOutput([[1], [2]], [[5, 6, 2], [7]], [[-0.1, -0.2, -0.3], [-1.0]], [True, False], [0, 1], 3)
    ids, mask, lps = out.padded(pad_id=0)
    assert ids.tolist() == [[5, 6, 2], [7, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert lps[1].tolist() == pytest.approx([-1.0, 0, 0])


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="n .*>= 1"):
        SamplingParams(n=0)


def test_update_weights_copies_by_name(model_and_tok):
    model, tok = model_and_tok
    engine = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id)
    name, p = next(iter(model.named_parameters()))
    new = torch.full_like(p, 0.5)
    old = p.detach().clone()
    engine.update_weights([(name, new)], version=7)
    assert torch.equal(p.detach(), new) and engine.weight_version == 7
    engine.update_weights([(name, old)], version=8)
    with pytest.raises(KeyError, match="no parameter"):
        engine.update_weights([("nope.weight", new)], version=9)


@pytest.mark.parametrize("params", [SamplingParams(n=4, temperature=1.0, max_new_tokens=5, seed=11),
                                    SamplingParams(n=3, temperature=0.8, top_k=5, max_new_tokens=4, seed=2)])
def test_shared_prompt_prefill_samples_what_generate_samples(model_and_tok, params):
    """Each prompt's forward once, its cache repeated per sample: the same tokens as `generate`'s own expansion
    (same logits up to rounding, same random draws), with left padding and a one-token prompt in the batch."""
    model, tok = model_and_tok
    prompts = [tok("12+3=").input_ids, tok("1").input_ids, tok("99+99=").input_ids]
    shared = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id).generate(prompts, params)
    plain = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id, share_prompts=False).generate(prompts, params)
    assert shared.response_ids == plain.response_ids and shared.prompt_index == plain.prompt_index
    assert len(shared) == params.n * 3
    for a, b in zip(shared.logprobs, plain.logprobs):
        assert a == pytest.approx(b, abs=1e-5)


def test_shared_prompt_prefill_greedy_with_several_samples(model_and_tok):
    """`generate` refuses greedy with num_return_sequences > 1; the shared path gives n copies of the greedy answer."""
    model, tok = model_and_tok
    prompts = [tok("12+3=").input_ids, tok("7").input_ids]
    engine = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id)
    one = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
    two = engine.generate(prompts, SamplingParams(n=2, temperature=0.0, max_new_tokens=4))
    assert two.response_ids == [r for r in one.response_ids for _ in range(2)]
