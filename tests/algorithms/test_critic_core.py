"""The critic core (creditrl/learner/critic.py): clipped value loss (verl `compute_value_loss` form), explained
variance, micro-batch losses summing to the mini-batch loss, and the config-time rules of `critic:`."""

import pytest
import torch

from creditrl.learner.critic import explained_variance, value_loss


def test_value_loss_is_half_max_of_clipped_and_unclipped_squared_error():
    v = torch.tensor([[0.0, 1.0, 2.0, 9.0]])
    old = torch.tensor([[0.5, 0.0, 2.2, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, m = value_loss(v, old, ret, mask, cliprange=0.5)
    clipped = torch.tensor([0.0, 0.5, 2.0])  # old +- 0.5: (0, 0.5), (-0.5, 0.5), (1.7, 2.7)
    e1 = (v[0, :3] - ret[0, :3]) ** 2  # 1, 0, 4
    e2 = (clipped - ret[0, :3]) ** 2  # 1, 0.25, 4
    assert loss.item() == pytest.approx(0.5 * torch.maximum(e1, e2).mean().item())
    assert m["critic/clipfrac"] == pytest.approx(1 / 3)
    unclipped, m0 = value_loss(v, old, ret, mask, cliprange=None)
    assert unclipped.item() == pytest.approx(0.5 * e1.mean().item()) and m0["critic/clipfrac"] == 0.0


def test_micro_batch_losses_sum_to_the_mini_batch_loss():
    gen = torch.Generator().manual_seed(0)
    v, old, ret = (torch.randn(6, 5, generator=gen) for _ in range(3))
    mask = (torch.rand(6, 5, generator=gen) > 0.3).float()
    whole, _ = value_loss(v, old, ret, mask, 0.2)
    n = mask.sum().item()
    parts = sum(value_loss(v[i:i + 2], old[i:i + 2], ret[i:i + 2], mask[i:i + 2], 0.2, n)[0] for i in (0, 2, 4))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_explained_variance():
    gen = torch.Generator().manual_seed(1)
    ret = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(4, 6)
    mask[0, 4:] = 0
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(ret, ret + 3.0, mask) == pytest.approx(1.0)  # a constant offset is not penalised
    assert explained_variance(ret, torch.zeros_like(ret), mask) == pytest.approx(0.0, abs=1e-4)
    r, vv = ret[mask > 0], (0.5 * ret)[mask > 0]
    want = 1 - (r - vv).var().item() / (r.var().item() + 1e-5)
    assert explained_variance(ret, 0.5 * ret, mask) == pytest.approx(want, rel=1e-12)
    assert explained_variance(torch.ones(2, 3), torch.rand(2, 3), torch.ones(2, 3)) <= 1.0  # constant returns: finite


@pytest.mark.parametrize("overrides,match", [
    (["algorithm.advantage=gae"], "needs a learned critic"),
    (["critic={}"], "does not use values"),
    (["algorithm.advantage=gae", "critic={}", "algorithm.token_weights=[{name: nthr}]"], "nthr"),
    (["algorithm.advantage=gae", "critic={}", "critic.lr=0"], "critic.lr"),
])
def test_critic_config_rules(overrides, match):
    from creditrl.config import load_config

    with pytest.raises(Exception, match=match):
        load_config("tiny_grpo", overrides)


def test_tiny_ppo_recipe_loads():
    from creditrl.config import load_config

    cfg = load_config("tiny_ppo")
    assert cfg.algorithm.advantage.name == "gae" and cfg.critic is not None
