"""Checks shared by the HF and vLLM generation-settings tests."""

from __future__ import annotations

import pytest
import torch

from creditrl.rollout.base import SamplingParams


def check_top_k_min_p(engine, model, prompts: list[list[int]], greedy_tol: float, top_k_tol: float) -> None:
    """top_k=1 and min_p=1 sample the greedy tokens with log-prob 0 (within `greedy_tol`); top_k=5 at T=0.7
    reports the log-prob of the renormalised top-5 of logits / T (float64 reference of `model`, within
    `top_k_tol`), and every sampled token is in that top-5."""
    greedy = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, 6))
    for kw in (dict(top_k=1), dict(min_p=1.0)):
        out = engine.generate(prompts, SamplingParams(2, 1.0, 1.0, 6, seed=3, **kw))
        assert out.response_ids == [r for r in greedy.response_ids for _ in range(2)], kw
        assert all(abs(v) < greedy_tol for lp in out.logprobs for v in lp), kw  # one token left: probability 1
    out = engine.generate(prompts, SamplingParams(2, 0.7, 1.0, 5, seed=1, top_k=5))
    for k in range(len(out)):
        ids = torch.tensor([out.prompt_ids[k] + out.response_ids[k]])
        with torch.no_grad():
            logits = model(ids).logits[0].double() / 0.7
        p = len(out.prompt_ids[k])
        for t, tok_id in enumerate(out.response_ids[k]):
            top = logits[p - 1 + t].topk(5)
            assert tok_id in top.indices.tolist()
            expect = torch.log_softmax(top.values, -1)[top.indices.tolist().index(tok_id)].item()
            assert out.logprobs[k][t] == pytest.approx(expect, abs=top_k_tol)
