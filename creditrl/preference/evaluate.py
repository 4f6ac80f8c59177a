"""Held-out preference metrics: does the policy prefer the chosen response, and how far is it from the reference.

For each held-out pair, under no grad, with LP(y) = Σ_t ℓ_t and M(y) = Σ_t (ℓ_t − ℓ_ref,t):

    pref/acc        [LP(y_w) > LP(y_l)]     the policy's own preference (defined for the reference model too)
    pref/reward_acc [M(y_w) > M(y_l)]       DPO implicit-reward accuracy (0 at the reference: all ties)
    pref/margin     mean LP(y_w) − LP(y_l)
    kl_per_token/{chosen,rejected}          mean over tokens of KL(π_ref ‖ π_θ) (full vocabulary, fused op)

The task metric (greedy accuracy) comes from `creditrl.trainer.evaluate.evaluate` on the recipe's eval prompts.
"""

from __future__ import annotations

import torch

from creditrl.preference.data import PreferencePair, pair_batch, pair_micro_batches
from creditrl.preference.forward import ReferenceStats, pair_token_stats
from creditrl.preference.losses import split_pairs
from creditrl.learner.batch import make_micro_batch


@torch.no_grad()
def evaluate_pairs(policy, pairs: list[PreferencePair], refs: ReferenceStats, pad_id: int,
                   tokens_per_micro_batch: int = 4096, tag: str = "eval") -> dict[str, float]:
    """Preference accuracy, log-prob margin and per-token KL to the reference on `pairs` (see module doc)."""
    if not pairs:
        raise ValueError("evaluate_pairs needs at least one pair")
    was_training = policy.training
    policy.eval()
    sums = {"acc": 0.0, "reward_acc": 0.0, "margin": 0.0}
    kl_sum, kl_tokens = [0.0, 0.0], [0.0, 0.0]
    for group in pair_micro_batches(pairs, tokens_per_micro_batch):
        chunk = [pairs[i] for i in group]
        batch = pair_batch(chunk, pad_id)
        mb = make_micro_batch(batch, list(range(len(batch))), pad_id)
        stats = pair_token_stats(policy, mb, batch.prompt_keys, refs, want_kl=True)
        mask = mb.mask
        lp_w, lp_l = split_pairs((stats["logp"] * mask).sum(-1))
        m_w, m_l = split_pairs(((stats["logp"] - stats["ref_logp"]) * mask).sum(-1))
        sums["acc"] += float((lp_w > lp_l).sum())
        sums["reward_acc"] += float((m_w > m_l).sum())
        sums["margin"] += float((lp_w - lp_l).sum())
        for side, (kl, n) in enumerate(zip(split_pairs((stats["ref_kl"] * mask).sum(-1)), split_pairs(mask.sum(-1)))):
            kl_sum[side] += float(kl.sum())
            kl_tokens[side] += float(n.sum())
    if was_training:
        policy.train()
    n = len(pairs)
    return {f"{tag}/pref_acc": sums["acc"] / n, f"{tag}/pref_reward_acc": sums["reward_acc"] / n,
            f"{tag}/pref_margin": sums["margin"] / n,
            f"{tag}/kl_per_token_chosen": kl_sum[0] / max(kl_tokens[0], 1.0),
            f"{tag}/kl_per_token_rejected": kl_sum[1] / max(kl_tokens[1], 1.0)}
