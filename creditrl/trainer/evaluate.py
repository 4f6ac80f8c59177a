"""Held-out evaluation: greedy accuracy and pass@k.

pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374): with n samples of which c are
correct, pass@k = 1 - C(n - c, k) / C(n, k); here n = k samples per prompt, so it is "any of k correct".
Evaluation samples from its own forked RNG stream, so evaluating never changes the training trajectory.
"""

from __future__ import annotations

from math import comb

import torch

from creditrl.config import RecipeConfig
from creditrl.data import PromptDataset
from creditrl.rewards import RewardManager, RewardSample
from creditrl.rollout.base import RolloutEngine, SamplingParams


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _correct(engine: RolloutEngine, data: PromptDataset, rewards: RewardManager, params: SamplingParams,
             tokenizer, tag: str) -> list[list[bool]]:
    rows = [data[i] for i in range(len(data))]
    out = engine.generate([list(r.prompt_ids) for r in rows], params)
    texts = tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
    samples = [RewardSample(f"{tag}/p{out.prompt_index[j]}/s{j % params.n}", rows[out.prompt_index[j]].prompt,
                            texts[j], rows[out.prompt_index[j]].answer, truncated=not out.finished[j],
                            response_tokens=len(out.response_ids[j]))
               for j in range(len(out))]
    primary = rewards.rewards[0].name  # the first reward function defines correctness
    scores = rewards.score(samples).components[primary]
    result: list[list[bool]] = [[] for _ in rows]
    for j, s in enumerate(scores):
        result[out.prompt_index[j]].append(s >= 1.0 - 1e-9)
    return result


def evaluate(engine: RolloutEngine, data: PromptDataset, rewards: RewardManager, tokenizer, *, max_new_tokens: int,
             pass_k: int, temperature: float, top_p: float, seed: int, tag: str = "eval") -> dict[str, float]:
    """{"eval/greedy_acc", "eval/pass@k", "eval/mean_acc@t"} on `data`."""
    metrics: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        greedy = _correct(engine, data, rewards, SamplingParams(1, 0.0, 1.0, max_new_tokens), tokenizer, tag)
        metrics["eval/greedy_acc"] = sum(g[0] for g in greedy) / len(greedy)
        if pass_k > 0:
            sampled = _correct(engine, data, rewards, SamplingParams(pass_k, temperature, top_p, max_new_tokens,
                                                                         seed=seed),
                               tokenizer, tag)
            metrics[f"eval/pass@{pass_k}"] = sum(pass_at_k(len(s), sum(s), pass_k) for s in sampled) / len(sampled)
            metrics["eval/sample_acc"] = sum(sum(s) / len(s) for s in sampled) / len(sampled)
    return metrics


def evaluate_task(cfg: RecipeConfig, engine: RolloutEngine, data: PromptDataset, rewards: RewardManager, tokenizer,
                  tag: str) -> dict[str, float]:
    """`evaluate` with the recipe's settings (eval.pass_k, eval.temperature, rollout.max_new_tokens / top_p);
    the evaluation seed is fixed per run (`seed + 7919`), so every evaluation of a run samples alike."""
    return evaluate(engine, data, rewards, tokenizer, max_new_tokens=cfg.rollout.max_new_tokens,
                    pass_k=cfg.eval.pass_k, temperature=cfg.eval.temperature, top_p=cfg.rollout.top_p,
                    seed=cfg.seed + 7919, tag=tag)
