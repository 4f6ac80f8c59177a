"""Every GRPO-family method composes through `Algorithm` from its recipe block and gives finite losses, gradients
and metrics on a batch with empty and single-token responses; micro-batch losses sum to the mini-batch loss."""

import json

import pytest
import torch

from creditrl.algorithms import ADVANTAGES, POLICY_LOSSES, TOKEN_WEIGHTS, Algorithm, AlgorithmConfig, KLConfig
from creditrl.algorithms.base import AdvantageInputs, AggregationNorm, LossInputs
from creditrl.registry import PartSpec


def spec(registry, name, **options):
    return PartSpec(name, registry.get(name).config_cls(**options))


METHODS = {
    "grpo": dict(),
    "dr_grpo": dict(advantage=spec(ADVANTAGES, "grpo", norm_by_std=False), loss_agg="seq-mean-token-sum-norm",
                    loss_agg_norm_len=6),
    "dapo": dict(policy_loss=spec(POLICY_LOSSES, "ppo_clip", clip_high=0.28, dual_clip=10.0)),
    "rloo": dict(advantage=spec(ADVANTAGES, "rloo")),
    "reinforce_pp": dict(advantage=spec(ADVANTAGES, "reinforce_pp"), kl=KLConfig(coef=0.01, estimator="k1",
                                                                                   placement="reward")),
    "reinforce_pp_baseline": dict(advantage=spec(ADVANTAGES, "reinforce_pp_baseline"),
                                  kl=KLConfig(coef=0.001, estimator="k3+")),
    "gspo": dict(policy_loss=spec(POLICY_LOSSES, "gspo"), loss_agg="seq-mean-token-mean"),
    "cispo": dict(policy_loss=spec(POLICY_LOSSES, "cispo", clip_high=4.0)),
    "clip_cov": dict(policy_loss=spec(POLICY_LOSSES, "clip_cov", clip_cov_ratio=0.05, clip_cov_lb=0.0)),
    "kl_cov": dict(policy_loss=spec(POLICY_LOSSES, "kl_cov", kl_cov_ratio=0.05, ppo_kl_coef=1.0)),
    "dcpo": dict(advantage=spec(ADVANTAGES, "dcpo_sas"), policy_loss=spec(POLICY_LOSSES, "dcpo_clip"),
                 loss_agg="only-token-mean"),
    "tis": dict(token_weights=[spec(TOKEN_WEIGHTS, "tis")]),
    "tis_sequence": dict(token_weights=[spec(TOKEN_WEIGHTS, "tis", level="sequence")]),
    "icepop": dict(token_weights=[spec(TOKEN_WEIGHTS, "icepop")], loss_agg="seq-mean-token-mean"),
    "minpro": dict(token_weights=[spec(TOKEN_WEIGHTS, "minpro")]),
}


def make_batch(B=12, T=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    lens[0], lens[1] = 0, 1
    mask = (torch.arange(T).unsqueeze(0) < lens.unsqueeze(1)).float()
    rollout = -torch.rand(B, T, generator=gen) * 3
    old = rollout + torch.randn(B, T, generator=gen) * 0.05
    ref = old + torch.randn(B, T, generator=gen) * 0.1
    rewards = torch.randint(0, 2, (B,), generator=gen).float()
    groups = torch.arange(B) // 4
    keys = [f"prompt-{g}" for g in groups.tolist()]
    return mask, rollout, old, ref, rewards, groups, keys


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_composes_and_trains_one_step(method):
    algo = Algorithm(AlgorithmConfig(**METHODS[method]))
    mask, rollout, old, ref, rewards, groups, keys = make_batch()
    adv, adv_metrics = algo.advantages(AdvantageInputs(rewards, groups, mask, keys, old_logprobs=old), ref_logprobs=ref)
    assert adv.shape == mask.shape and torch.isfinite(adv).all() and torch.all(adv[mask == 0] == 0)
    logits = torch.zeros_like(old, requires_grad=True)  # the "policy": l = l_old + logits
    lp = old + logits + torch.randn(old.shape, generator=torch.Generator().manual_seed(1)) * 0.05
    norm = AggregationNorm(num_tokens=mask.sum().item(), num_seqs=(mask.sum(-1) > 0).sum().item(), norm_len=6)
    total = 0.0
    for rows in (slice(0, 5), slice(5, 12)):
        inputs = LossInputs(logprobs=lp[rows], old_logprobs=old[rows], advantages=adv[rows], mask=mask[rows],
                            rollout_logprobs=rollout[rows], ref_logprobs=ref[rows], group_ids=groups[rows])
        loss, metrics = algo.loss(inputs, norm)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
        total = total + loss
    total.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[mask == 0] == 0)
    assert json.loads(json.dumps(algo.state_dict())) == algo.state_dict()


def test_dcpo_state_goes_through_algorithm_checkpoint():
    algo = Algorithm(AlgorithmConfig(**METHODS["dcpo"]))
    mask, _, old, _, rewards, groups, keys = make_batch()
    algo.advantages(AdvantageInputs(rewards, groups, mask, keys))
    state = json.loads(json.dumps(algo.state_dict()))
    assert set(state["advantage"]["stats"]) == set(keys)
    fresh = Algorithm(AlgorithmConfig(**METHODS["dcpo"]))
    fresh.load_state_dict(state)
    a1, _ = algo.advantages(AdvantageInputs(rewards, groups, mask, keys))
    a2, _ = fresh.advantages(AdvantageInputs(rewards, groups, mask, keys))
    torch.testing.assert_close(a1, a2)


def test_response_utilisation_counts_responses_with_a_nonzero_advantage():
    """`adv/nonzero_frac`, hand-computed: GRPO gives an all-equal group zero advantages (2 of 5 responses carry a
    signal); DCPO's SAS revisiting the same all-equal prompt after a mixed visit gives it a non-zero advantage."""
    mask = torch.ones(5, 3)
    mask[4, 1:] = 0  # a one-token response still counts once
    groups = torch.tensor([0, 0, 0, 1, 1])
    keys = ["a", "a", "a", "b", "b"]
    grpo = Algorithm(AlgorithmConfig(**METHODS["grpo"]))
    _, m = grpo.advantages(AdvantageInputs(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0]), groups, mask, keys))
    assert m["adv/nonzero_frac"] == pytest.approx(2 / 5)
    assert m["adv/zero_std_frac"] == pytest.approx(3 / 5)  # per response: for binary GRPO the two agree

    dcpo = Algorithm(AlgorithmConfig(**METHODS["dcpo"]))
    first = AdvantageInputs(torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]), groups, mask, keys)  # "a" mixed, "b" equal
    _, m = dcpo.advantages(first)
    assert m["adv/nonzero_frac"] == pytest.approx(3 / 5)
    again = AdvantageInputs(torch.ones(5), groups, mask, keys)  # both all-equal now; only "a" has a mixed history
    _, m = dcpo.advantages(again)
    assert m["adv/nonzero_frac"] == pytest.approx(3 / 5)
