"""80/20 high-entropy token mask (algorithms-token-level.md §14): selection, denominator, scopes."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.algorithms import Algorithm, AlgorithmConfig
from creditrl.algorithms.base import AggregationNorm, LossInputs
from creditrl.algorithms.entropy_mask import HighEntropyMask, HighEntropyMaskConfig, top_ratio_count
from creditrl.algorithms.ppo_clip import PPOClipConfig
from creditrl.registry import PartSpec

SPEC_H = [0.1, 2.3, 0.05, 1.1, 0.7, 0.02, 0.9, 3.0, 0.3, 0.01]


def inputs_with_entropy(h, mask=None, adv=None, lp=None):
    h = torch.as_tensor(h, dtype=torch.float64).reshape(1, -1) if not torch.is_tensor(h) else h
    mask = torch.ones_like(h) if mask is None else mask
    adv = torch.ones_like(h) * mask if adv is None else adv
    lp = torch.full_like(h, math.log(0.5)) if lp is None else lp
    return LossInputs(lp.clone().requires_grad_(), lp.clone(), adv, mask, entropy=h)


def test_spec_vector_selects_positions_1_and_7():
    w, new_mask, metrics = HighEntropyMask(HighEntropyMaskConfig(0.2))(inputs_with_entropy(SPEC_H))
    assert new_mask[0].nonzero().squeeze(1).tolist() == [1, 7]
    assert torch.equal(w, torch.ones_like(w))
    assert metrics["entropy_mask/kept_frac"] == pytest.approx(0.2)
    assert metrics["entropy_mask/threshold"] == pytest.approx(2.3)


@pytest.mark.parametrize("n,ratio,k", [(10, 0.2, 2), (11, 0.2, 3), (1, 0.2, 1), (4, 0.01, 1), (7, 1.0, 7), (0, 0.2, 0)])
def test_k_is_the_reference_approximate_ceil(n, ratio, k):
    assert top_ratio_count(n, ratio) == k
    assert top_ratio_count(n, ratio) == (0 if n == 0 else max(1, int(n * ratio + 0.9999)))


def test_random_selection_matches_topk_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(3, 8, generator=g, dtype=torch.float64)  # continuous: no ties
    mask = (torch.rand(3, 8, generator=g) > 0.25).double()
    h_pad = torch.where(mask > 0, h, torch.full_like(h, 100.0))  # huge entropy on padding must not be picked
    _, new_mask, _ = HighEntropyMask(HighEntropyMaskConfig(0.3))(inputs_with_entropy(h_pad, mask))
    valid = mask.flatten().nonzero().squeeze(1)
    k = max(1, int(len(valid) * 0.3 + 0.9999))
    top = valid[h.flatten()[valid].topk(k).indices]
    expected = torch.zeros(24, dtype=torch.float64)
    expected[top] = 1.0
    assert torch.equal(new_mask.flatten(), expected)


def test_token_mean_denominator_is_the_number_of_selected_tokens():
    g = torch.Generator().manual_seed(1)
    h = torch.rand(2, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(2, 5, generator=g, dtype=torch.float64)
    inp = inputs_with_entropy(h, adv=adv)
    cfg = AlgorithmConfig(policy_loss=PartSpec("ppo_clip", PPOClipConfig(0.2, 0.28, None)),
                          token_weights=[PartSpec("high_entropy_mask", HighEntropyMaskConfig(0.2))])
    alg = Algorithm(cfg)
    loss, metrics = alg.loss(inp)
    top2 = h.flatten().topk(2).indices
    expected = (-adv.flatten()[top2]).sum() / 2  # r = 1: L = -A, mean over the k = 2 selected tokens
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    # with the mini-batch normaliser of the full mask (10 tokens), compose rescales it to the kept count (2)
    loss_n, metrics_n = alg.loss(inp, AggregationNorm(num_tokens=10.0, num_seqs=2.0))
    assert loss_n.item() == pytest.approx(expected.item(), abs=1e-12)
    assert metrics_n["agg/kept_token_frac"] == pytest.approx(0.2)


def test_empty_micro_batch_and_single_token():
    part = HighEntropyMask(HighEntropyMaskConfig())
    z = torch.zeros(2, 3, dtype=torch.float64)
    _, new_mask, _ = part(inputs_with_entropy(z + 1.0, mask=z))
    assert torch.equal(new_mask, z)
    _, new_mask, _ = part(inputs_with_entropy([[0.7]]))
    assert new_mask.item() == 1.0  # k = max(1, ...) keeps the single token


def test_mini_batch_scope_selects_by_the_scope_threshold():
    h = torch.tensor([[5.0, 4.0, 3.0], [0.5, 0.4, 0.3]], dtype=torch.float64)
    full = inputs_with_entropy(h)
    part = HighEntropyMask(HighEntropyMaskConfig(0.5))
    part.scope = "mini_batch"
    part.prepare(full)  # k = 3 of 6 -> threshold 3.0: the whole second row is below it
    _, second, _ = part(inputs_with_entropy(h[1:]))
    assert torch.equal(second, torch.zeros(1, 3, dtype=torch.float64))
    part.scope = "micro_batch"
    _, second_local, _ = part(inputs_with_entropy(h[1:]))
    assert second_local.sum().item() == 2  # micro-batch statistics: top 2 of the row's own 3 tokens


def test_bad_ratio_and_missing_entropy():
    with pytest.raises(ValueError, match="ratio"):
        HighEntropyMaskConfig(0.0)
    with pytest.raises(ValueError, match="entropy"):
        HighEntropyMask(HighEntropyMaskConfig())(LossInputs(torch.zeros(1, 2), torch.zeros(1, 2),
                                                            torch.zeros(1, 2), torch.ones(1, 2)))
