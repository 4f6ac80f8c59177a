"""Held-out evaluation: greedy accuracy and pass@k.

pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374): with n samples of which c are
correct, pass@k = 1 - C(n - c, k) / C(n, k); here n = k samples per prompt, so it is "any of k correct".
Evaluation samples from its own forked RNG stream, so evaluating never changes the training trajectory.
"""

from __future__ import annotations

from math import comb
from typing import Callable

import torch

from creditrl.config import RecipeConfig
from creditrl.data import PromptDataset, PromptRow
from creditrl.rewards import RewardManager, RewardSample
from creditrl.rollout.base import RolloutEngine, RolloutOutput, SamplingParams


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def reward_samples(out: RolloutOutput, rows: list[PromptRow], tokenizer,
                   sample_id: Callable[[int], str]) -> list[RewardSample]:
    """The RewardSample of every generated row `j` of `out` (its prompt row `rows[out.prompt_index[j]]`): the
    prompt text the model saw, the decoded response, the gold answer, every dataset column (`meta`), the prompt
    conversation of chat data (`messages`) and the response's token ids."""
    texts = tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
    samples = []
    for j, text in enumerate(texts):
        row = rows[out.prompt_index[j]]
        messages = getattr(row, "messages", None)
        samples.append(RewardSample(
            sample_id(j), row.prompt, text, row.answer, truncated=not out.finished[j], meta=dict(row.fields),
            response_tokens=len(out.response_ids[j]), messages=None if messages is None else [dict(m) for m in messages],
            response_ids=list(out.response_ids[j])))
    return samples


def _correct(engine: RolloutEngine, data: PromptDataset, rewards: RewardManager, params: SamplingParams,
             tokenizer, tag: str) -> list[list[bool]]:
    rows = [data[i] for i in range(len(data))]
    out = engine.generate([list(r.prompt_ids) for r in rows], params)
    samples = reward_samples(out, rows, tokenizer, lambda j: f"{tag}/p{out.prompt_index[j]}/s{j % params.n}")
    primary = rewards.rewards[0].name  # the first reward function defines correctness
    scores = rewards.score(samples).components[primary]
    result: list[list[bool]] = [[] for _ in rows]
    for j, s in enumerate(scores):
        result[out.prompt_index[j]].append(s >= 1.0 - 1e-9)
    return result


def evaluate(engine: RolloutEngine, data: PromptDataset, rewards: RewardManager, tokenizer, *, max_new_tokens: int,
             pass_k: int, temperature: float, top_p: float, seed: int, tag: str = "eval", top_k: int = 0,
             min_p: float = 0.0, sample_max_new_tokens: int | None = None, stop_token_ids: tuple[int, ...] = (),
             stop: tuple[str, ...] = ()) -> dict[str, float]:
    """{"eval/greedy_acc", "eval/pass@k", "eval/mean_acc@t"} on `data`. Greedy decoding uses `max_new_tokens`;
    pass@k samples with temperature / top_p / top_k / min_p and `sample_max_new_tokens` (None: max_new_tokens).
    Both stop at the end tokens `stop_token_ids` (besides the engine's EOS) and the stop strings `stop`."""
    metrics: dict[str, float] = {}
    ends = dict(stop_token_ids=tuple(stop_token_ids), stop=tuple(stop))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        greedy = _correct(engine, data, rewards, SamplingParams(1, 0.0, 1.0, max_new_tokens, **ends), tokenizer, tag)
        metrics["eval/greedy_acc"] = sum(g[0] for g in greedy) / len(greedy)
        if pass_k > 0:
            params = SamplingParams(pass_k, temperature, top_p, sample_max_new_tokens or max_new_tokens, seed=seed,
                                    top_k=top_k, min_p=min_p, **ends)
            sampled = _correct(engine, data, rewards, params, tokenizer, tag)
            metrics[f"eval/pass@{pass_k}"] = sum(pass_at_k(len(s), sum(s), pass_k) for s in sampled) / len(sampled)
            metrics["eval/sample_acc"] = sum(sum(s) / len(s) for s in sampled) / len(sampled)
    return metrics


def eval_sampling_kwargs(cfg: RecipeConfig, tokenizer) -> dict:
    """`evaluate` keyword arguments of a recipe: eval.sampling, each null falling back to the rollout's value
    (temperature: to eval.temperature); greedy uses rollout.max_new_tokens; end tokens / stop strings of the
    rollout (creditrl/rollout/stopping.py)."""
    from creditrl.rollout.stopping import stop_kwargs

    es, rc = cfg.eval.sampling, cfg.rollout

    def pick(value, default):
        return default if value is None else value

    return dict(max_new_tokens=rc.max_new_tokens, pass_k=cfg.eval.pass_k,
                temperature=pick(es.temperature, cfg.eval.temperature), top_p=pick(es.top_p, rc.top_p),
                top_k=pick(es.top_k, rc.top_k), min_p=pick(es.min_p, rc.min_p),
                sample_max_new_tokens=pick(es.max_new_tokens, rc.max_new_tokens), **stop_kwargs(cfg, tokenizer))


def evaluate_task(cfg: RecipeConfig, engine: RolloutEngine, data: PromptDataset, rewards: RewardManager, tokenizer,
                  tag: str) -> dict[str, float]:
    """`evaluate` with the recipe's settings (`eval_sampling_kwargs`); the evaluation seed is fixed per run
    (`seed + 7919`), so every evaluation of a run samples alike."""
    return evaluate(engine, data, rewards, tokenizer, seed=cfg.seed + 7919, tag=tag,
                    **eval_sampling_kwargs(cfg, tokenizer))
