"""Generation settings on the vLLM engine (issue 13), against the HF engine on the same weights: extra end
tokens, stop strings (kept in the response), top_k=1 / min_p=1 = greedy, top-k log-probs of the truncated
distribution. One engine for the module (~20 s to start); skipped without vLLM."""

from __future__ import annotations

import pytest
import torch

from creditrl.config import load_config
from creditrl.rollout.base import SamplingParams
from creditrl.rollout.vllm_engine import vllm_available
from tests.rollout.sampling_checks import check_top_k_min_p

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (`make install`)")
EOS = 2  # the tiny tokenizer's </s>


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from creditrl.models.tiny import build_tiny_model
    from creditrl.rollout.factory import make_rollout_engine
    from creditrl.rollout.hf_engine import HFGenerateEngine

    path = build_tiny_model(tmp_path_factory.mktemp("vllm_gen"), seed=0)
    cfg = load_config("tiny_grpo", [f"model.path={path}", "rollout.engine=vllm", "rollout.vllm.enforce_eager=true",
                                    f"rollout.vllm.kv_cache_memory_bytes={256 << 20}"])
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf = HFGenerateEngine(model, tok.pad_token_id, EOS, tokenizer=tok)
    eng = make_rollout_engine(cfg, pad_id=0, eos_id=EOS, seed=0)
    yield eng, hf, model, tok
    eng.shutdown()


def _prompts(tok):
    return [tok("12+3=").input_ids, tok("5+5=").input_ids, tok("7*8=").input_ids]


def test_end_tokens_and_stop_strings_match_the_hf_engine(setup):
    eng, hf, _, tok = setup
    prompts = _prompts(tok)
    free = eng.generate(prompts, SamplingParams(1, 0.0, 1.0, 8))
    assert free.response_ids == hf.generate(prompts, SamplingParams(1, 0.0, 1.0, 8)).response_ids
    second = free.response_ids[0][1]  # an end token the first prompt reaches at its 2nd token (or earlier)
    ends = SamplingParams(1, 0.0, 1.0, 8, stop_token_ids=(second,))
    out, ref = eng.generate(prompts, ends), hf.generate(prompts, ends)
    assert out.response_ids == ref.response_ids and out.finished == ref.finished
    assert out.response_ids[0][-1] == second and out.finished[0] and len(out.response_ids[0]) <= 2
    stop = tok.decode(free.response_ids[0], skip_special_tokens=True)[:3]
    strings = SamplingParams(1, 0.0, 1.0, 8, stop=(stop,))
    out, ref = eng.generate(prompts, strings), hf.generate(prompts, strings)
    assert out.response_ids == ref.response_ids and out.finished == ref.finished
    assert out.finished[0] and tok.decode(out.response_ids[0], skip_special_tokens=True).endswith(stop)
    # sampled: every row ends at its first end token or stop string, which stays in the response
    out = eng.generate(prompts, SamplingParams(4, 1.0, 1.0, 8, seed=5, stop_token_ids=(second,), stop=("=",)))
    for r, fin in zip(out.response_ids, out.finished):
        text = tok.decode(r, skip_special_tokens=True)
        assert fin == (r[-1] in (second, EOS) or text.endswith("="))
        assert second not in r[:-1] and "=" not in tok.decode(r[:-1], skip_special_tokens=True)


def test_top_k_min_p_greedy_and_truncated_logprobs(setup):
    eng, _, model, tok = setup
    check_top_k_min_p(eng, model, _prompts(tok), greedy_tol=1e-4, top_k_tol=1e-3)
