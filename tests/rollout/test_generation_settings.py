"""Generation settings (issue 13): end tokens from generation_config and rollout.stop_token_ids, stop strings,
top_k, min_p, eval sampling, config validation. HF engine here; the vLLM engine in test_vllm_generation.py."""

import json

import pytest
import torch

from creditrl.config import load_config
from creditrl.config.loader import ConfigError
from creditrl.models.tiny import build_tiny_model
from creditrl.rollout.base import SamplingParams
from creditrl.rollout.hf_engine import HFGenerateEngine
from creditrl.rollout.stopping import end_token_ids, first_stop, model_end_token_ids
from tests.rollout.sampling_checks import check_top_k_min_p


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("m"), seed=1)
    return str(path), AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _prompts(tok):
    return [tok("12+3=").input_ids, tok("5+5=").input_ids]


def test_end_tokens_from_generation_config_stop_generation(tiny, tmp_path):
    path, model, tok = tiny
    engine = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id, tokenizer=tok)
    prompts = _prompts(tok)
    free = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, 6))
    assert free.finished == [False, False]  # the untrained model never says EOS: runs to max_new_tokens
    first = free.response_ids[0][0]
    # a model directory whose generation_config declares a second end token
    cfg = {}
    cfg["eos_token_id"] = [tok.eos_token_id, first]
    (tmp_path / "generation_config.json").write_text(json.dumps(cfg))
    assert model_end_token_ids(str(tmp_path)) == [tok.eos_token_id, first]
    ends = end_token_ids(tok.eos_token_id, str(tmp_path), extra=[7])
    assert ends == tuple(sorted({tok.eos_token_id, first, 7}))
    assert end_token_ids(tok.eos_token_id, str(tmp_path / "missing")) == (tok.eos_token_id,)
    out = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, 6, stop_token_ids=ends))
    assert out.response_ids[0] == [first] and out.finished[0]  # the end token is kept, as EOS is
    assert len(out.logprobs[0]) == 1
    assert out.response_ids[1] == free.response_ids[1] and not out.finished[1]
    # sampled, several samples per prompt: every row ends at its first end token
    torch.manual_seed(0)
    out = engine.generate(prompts, SamplingParams(4, 1.0, 1.0, 8, stop_token_ids=ends))
    for r, lp, fin in zip(out.response_ids, out.logprobs, out.finished):
        assert len(r) == len(lp)
        assert fin == (r[-1] in ends) and not set(r[:-1]) & set(ends)


def test_stop_string_ends_the_response_and_stays_in_it(tiny):
    path, model, tok = tiny
    engine = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id, tokenizer=path)  # a path: loaded lazily
    prompts = _prompts(tok)
    free = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, 8))
    text0 = tok.decode(free.response_ids[0], skip_special_tokens=True)
    stop = text0[:3]
    out = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, 8, stop=(stop,)))
    assert out.response_ids[0] == free.response_ids[0][:3] and out.finished[0]
    assert tok.decode(out.response_ids[0], skip_special_tokens=True).endswith(stop)
    assert stop not in tok.decode(free.response_ids[1]) and out.response_ids[1] == free.response_ids[1]
    assert not out.finished[1]
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    assert first_stop(free.response_ids[0], decode, [stop]) == 2
    # no tokenizer: stop strings are refused with a fix
    bare = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id)
    with pytest.raises(ValueError, match="tokenizer"):
        bare.generate(prompts, SamplingParams(1, 0.0, 1.0, 4, stop=("x",)))


def test_top_k_1_and_min_p_1_are_greedy_and_logprobs_are_of_the_truncated_distribution(tiny):
    path, model, tok = tiny
    engine = HFGenerateEngine(model, tok.pad_token_id, tok.eos_token_id)
    check_top_k_min_p(engine, model, _prompts(tok), greedy_tol=1e-5, top_k_tol=1e-4)


def test_sampling_params_validation():
    for kw, match in ((dict(top_k=-2), "top_k"), (dict(min_p=1.5), "min_p"), (dict(stop=("",)), "stop")):
        with pytest.raises(ValueError, match=match):
            SamplingParams(**kw)
    assert SamplingParams(top_k=-1).top_k_or_off == 0
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)


@pytest.mark.parametrize("override, match", [
    ("rollout.top_k=-3", "rollout.top_k must be an integer >= 1, or 0"),
    ("rollout.min_p=1.5", "rollout.min_p must be in \\[0, 1\\]"),
    ("rollout.stop=['']", "rollout.stop must be a list of non-empty strings"),
    ("rollout.stop_token_ids=[-1]", "rollout.stop_token_ids must be token ids"),
    ("eval.sampling.top_p=0", "eval.sampling.top_p must be in \\(0, 1\\]"),
    ("eval.sampling.temperature=0", "eval.sampling.temperature must be a positive number"),
    ("eval.sampling.min_p=2", "eval.sampling.min_p"),
    ("eval.sampling.max_new_tokens=0", "eval.sampling.max_new_tokens"),
])
def test_config_validation(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_grpo", [override])


def test_eval_sampling_falls_back_to_the_rollout(tiny):
    from creditrl.trainer.evaluate import eval_sampling_kwargs

    path, _, tok = tiny
    base = ["model.path=" + path, "rollout.top_p=0.9", "rollout.top_k=20", "rollout.min_p=0.05",
            "rollout.max_new_tokens=12", "rollout.stop=['</a>']", "rollout.stop_token_ids=[9]", "eval.temperature=0.6"]
    kw = eval_sampling_kwargs(load_config("tiny_grpo", base), tok)
    assert (kw["temperature"], kw["top_p"], kw["top_k"], kw["min_p"], kw["sample_max_new_tokens"]) == \
        (0.6, 0.9, 20, 0.05, 12)
    assert kw["stop"] == ("</a>",) and set(kw["stop_token_ids"]) >= {9, tok.eos_token_id}
    kw = eval_sampling_kwargs(load_config("tiny_grpo", base + [
        "eval.sampling.temperature=1.2", "eval.sampling.top_p=1.0", "eval.sampling.top_k=0",
        "eval.sampling.min_p=0", "eval.sampling.max_new_tokens=30"]), tok)
    assert (kw["temperature"], kw["top_p"], kw["top_k"], kw["min_p"], kw["sample_max_new_tokens"]) == \
        (1.2, 1.0, 0, 0, 30)
    assert kw["max_new_tokens"] == 12  # greedy keeps the rollout's length
