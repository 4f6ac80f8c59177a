"""token_stat_scope through `Algorithm`: scope injection, prepare order, exact mini-batch sums, multi-rank prepare."""

from __future__ import annotations

import pytest
import torch

from creditrl.algorithms import Algorithm, AlgorithmConfig
from creditrl.algorithms.base import AggregationNorm, LossInputs
from creditrl.algorithms.entropy_mask import HighEntropyMaskConfig
from creditrl.algorithms.hapo_clip import HapoClipConfig
from creditrl.algorithms.hapo_redistribution import HapoRedistributionConfig
from creditrl.algorithms.lp_reg import LpRegConfig
from creditrl.algorithms.steer import SteerConfig, steer_omega, steer_stats
from creditrl.registry import PartSpec
from tests.algorithms.test_token_scope import run_ranks


def batch(seed=0, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    lp = torch.rand(B, T, generator=g, dtype=torch.float64) * -3 - 0.01
    old = lp + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64) * mask
    ent = torch.rand(B, T, generator=g, dtype=torch.float64) * 2 + 0.01
    old_ent = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    proxy = lp + 0.3 + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    return LossInputs(lp, old, adv, mask, entropy=ent, old_entropy=old_ent, group_ids=torch.arange(B) // 3,
                      extras={"old_proxy_logp": proxy})


def rows(inp: LossInputs, sel) -> LossInputs:
    return LossInputs(inp.logprobs[sel], inp.old_logprobs[sel], inp.advantages[sel], inp.mask[sel],
                      entropy=inp.entropy[sel], old_entropy=inp.old_entropy[sel], group_ids=inp.group_ids[sel],
                      extras={k: v[sel] for k, v in inp.extras.items()})


def full_config(scope: str) -> AlgorithmConfig:
    return AlgorithmConfig(
        policy_loss=PartSpec("hapo_clip", HapoClipConfig(clip_high=0.28)),
        token_weights=[PartSpec("high_entropy_mask", HighEntropyMaskConfig(0.5)), PartSpec("steer", SteerConfig()),
                       PartSpec("hapo_redistribution", HapoRedistributionConfig(clip_high=0.28))],
        regularizers=[PartSpec("lp_reg", LpRegConfig(neg_ratio=0.5)), PartSpec("entropy_bonus")],
        token_stat_scope=scope,
    )


def test_scope_is_injected_into_every_part_with_statistics():
    alg = Algorithm(full_config("mini_batch"))
    scoped = [p for p in [alg.policy_loss, *alg.token_weights, *alg.regularizers] if hasattr(p, "scope")]
    assert len(scoped) == 5 and all(p.scope == "mini_batch" for p in scoped)
    with pytest.raises(ValueError, match="token_stat_scope"):
        AlgorithmConfig(token_stat_scope="per_gpu")


@pytest.mark.parametrize("scope", ["mini_batch", "global"])
def test_micro_batch_losses_sum_to_the_mini_batch_loss(scope):
    """With a scope wider than the micro-batch, splitting changes nothing: losses and gradients are exact."""
    inp = batch()
    lp = inp.logprobs.clone().requires_grad_()
    whole_inputs = LossInputs(lp, *[getattr(inp, f) for f in ("old_logprobs", "advantages", "mask")],
                              entropy=inp.entropy, old_entropy=inp.old_entropy, group_ids=inp.group_ids,
                              extras=inp.extras)
    reference = Algorithm(full_config("micro_batch"))  # the whole mini-batch as one micro-batch
    whole, _ = reference.loss(whole_inputs)
    (g_whole,) = torch.autograd.grad(whole, lp)

    alg = Algorithm(full_config(scope))
    alg.prepare(inp)
    norm = AggregationNorm(num_tokens=inp.mask.sum().item(), num_seqs=float(len(inp.mask)))
    lp2 = inp.logprobs.clone().requires_grad_()
    total = 0.0
    for sel in (slice(0, 2), slice(2, 3), slice(3, 6)):
        part = rows(inp, sel)
        part = LossInputs(lp2[sel], part.old_logprobs, part.advantages, part.mask, entropy=part.entropy,
                          old_entropy=part.old_entropy, group_ids=part.group_ids, extras=part.extras)
        loss, metrics = alg.loss(part, norm)
        total = total + loss
    (g_split,) = torch.autograd.grad(total, lp2)
    assert total.item() == pytest.approx(whole.item(), abs=1e-12)
    assert torch.allclose(g_split, g_whole, atol=1e-12)
    assert metrics["agg/kept_token_frac"] == pytest.approx(0.5, abs=0.1)


def test_micro_batch_scope_differs_from_the_whole_and_prepare_is_a_no_op():
    inp = batch(seed=1)
    alg = Algorithm(full_config("micro_batch"))
    alg.prepare(inp)  # no-op
    assert alg._scope_kept is None
    whole, _ = alg.loss(inp)
    norm = AggregationNorm(num_tokens=inp.mask.sum().item(), num_seqs=float(len(inp.mask)))
    split = sum(alg.loss(rows(inp, sel), norm)[0].item() for sel in (slice(0, 2), slice(2, 6)))
    assert split != pytest.approx(whole.item(), abs=1e-9)  # statistics per micro-batch: the reference behaviour


def test_prepare_sees_the_mask_of_earlier_token_weights():
    inp = batch(seed=2)
    cfg = AlgorithmConfig(token_weights=[PartSpec("high_entropy_mask", HighEntropyMaskConfig(0.3)),
                                         PartSpec("steer", SteerConfig())], token_stat_scope="mini_batch")
    alg = Algorithm(cfg)
    alg.prepare(inp)
    _, kept, _ = alg.token_weights[0](inp)
    expected = steer_stats(steer_omega(inp.logprobs, inp.old_logprobs, inp.advantages, inp.old_entropy), kept)
    assert alg.token_weights[1]._stats._stored == expected


def test_loss_without_prepare_in_a_wide_scope_raises():
    alg = Algorithm(full_config("mini_batch"))
    with pytest.raises(RuntimeError, match="prepare"):
        alg.loss(batch())


def test_kernel_options_are_merged_and_conflicts_rejected():
    alg = Algorithm(AlgorithmConfig(regularizers=[PartSpec("lp_reg", LpRegConfig(threshold=0.05))]))
    assert alg.kernel_options["lp_reg"]["threshold"] == 0.05
    assert Algorithm(AlgorithmConfig()).kernel_options == {}
    with pytest.raises(ValueError, match="kernel option"):
        Algorithm(AlgorithmConfig(regularizers=[PartSpec("lp_reg", LpRegConfig(threshold=0.05)),
                                                PartSpec("lp_reg", LpRegConfig(threshold=0.1))]))


def test_global_prepare_across_simulated_ranks_equals_single_process():
    inp = batch(seed=3, B=8)
    single = Algorithm(full_config("global"))
    single.prepare(inp)

    def prepare_on_rank(shard, reduce):
        alg = Algorithm(full_config("global"))
        alg.prepare(shard, reduce)
        return alg

    ranks = run_ranks([rows(inp, slice(0, 3)), rows(inp, slice(3, 8))], prepare_on_rank)
    for alg in ranks:
        for mine, ref in zip([alg.policy_loss, *alg.token_weights, alg.regularizers[0]],
                             [single.policy_loss, *single.token_weights, single.regularizers[0]]):
            a, b = mine._stats._stored, ref._stats._stored
            if isinstance(a, float):
                assert a == pytest.approx(b, rel=1e-12)
            else:
                for field in a.__dataclass_fields__:
                    x, y = getattr(a, field), getattr(b, field)
                    assert (x is None and y is None) or x == pytest.approx(y, rel=1e-12), field
        assert alg._scope_kept == pytest.approx(single._scope_kept)
