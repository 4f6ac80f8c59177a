"""GAE (creditrl/algorithms/gae.py) against a float64 brute-force double loop, its config-time rules, and one
token-level part composed with GAE advantages."""

import math

import pytest
import torch

from creditrl.algorithms import ADVANTAGES, Algorithm, AlgorithmConfig
from creditrl.algorithms.base import AdvantageInputs, AggregationNorm, LossInputs
from creditrl.algorithms.gae import GAEConfig, gae_advantages_returns
from creditrl.registry import PartSpec


def brute_force(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the VALID positions after t (masked ones skipped), with
    delta_k = r_k + gamma V_{next valid after k} - V_k (0 after the last valid one); R = A + V; A whitened."""
    adv_raw, rets = [], []
    for r, v, m in zip(rewards, values, mask):
        valid = [t for t in range(len(m)) if m[t] > 0]
        row_a, row_r = [0.0] * len(m), [0.0] * len(m)
        for i, t in enumerate(valid):
            a = 0.0
            for l, k in enumerate(valid[i:]):
                nxt = valid[i + l + 1] if i + l + 1 < len(valid) else None
                delta = r[k] + gamma * (v[nxt] if nxt is not None else 0.0) - v[k]
                a += (gamma * lam) ** l * delta
            row_a[t], row_r[t] = a, a + v[t]
        adv_raw.append(row_a)
        rets.append(row_r)
    xs = [a for ra, m in zip(adv_raw, mask) for a, mm in zip(ra, m) if mm > 0]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    adv = [[(a - mean) / math.sqrt(var + 1e-8) * mm for a, mm in zip(ra, m)] for ra, m in zip(adv_raw, mask)]
    return adv, rets


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
@pytest.mark.parametrize("holes", [False, True])
def test_gae_matches_brute_force(gamma, lam, holes):
    gen = torch.Generator().manual_seed(3)
    B, T = 6, 9
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    if holes:  # interior masked positions (observation tokens): skipped, not reset
        mask = mask * (torch.rand(B, T, generator=gen) > 0.2).to(torch.float64)
        mask[:, 0] = 1.0
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv, ret = gae_advantages_returns(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = brute_force(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_gae_by_hand_and_returns_not_whitened():
    # one response of 3 tokens, reward 1 on the last, V = (0.5, 0.2, 0.9), gamma = lam = 1:
    # delta = (0 + 0.2 - 0.5, 0 + 0.9 - 0.2, 1 + 0 - 0.9) = (-0.3, 0.7, 0.1); A = (0.5, 0.8, 0.1); R = (1, 1, 1)
    values = torch.tensor([[0.5, 0.2, 0.9, 7.0]], dtype=torch.float64)  # 7.0 sits on padding: ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    adv, ret = gae_advantages_returns(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64))
    raw = torch.tensor([0.5, 0.8, 0.1], dtype=torch.float64)
    torch.testing.assert_close(adv[0, :3], (raw - raw.mean()) / torch.sqrt(raw.var() + 1e-8))
    assert adv[0, 3] == 0.0


def test_estimator_places_reward_on_last_token_and_keeps_returns():
    est = ADVANTAGES.build("gae", GAEConfig(gamma=1.0, lam=1.0))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    values = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.4, 0.5]])
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 1]), mask=mask,
                             prompt_keys=["a", "b"], values=values)
    adv, metrics = est(inputs)
    torch.testing.assert_close(est.returns, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert adv.shape == mask.shape and (adv[mask == 0] == 0).all()
    assert metrics["critic/returns_mean"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="critic"):
        est(AdvantageInputs(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]), mask=mask[:1],
                            prompt_keys=["a"]))


def test_kl_in_reward_reaches_gae_per_token():
    """kl.placement: reward puts -beta KL_t on every token; GAE sees those token rewards (verl's pairing)."""
    cfg = AlgorithmConfig(advantage=PartSpec("gae", GAEConfig(1.0, 1.0)))
    cfg.kl.coef, cfg.kl.placement, cfg.kl.estimator = 0.5, "reward", "k1"
    alg = Algorithm(cfg)
    mask = torch.ones(1, 3)
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])  # k1 = old - ref = (0.5, 0, -0.5)
    inputs = AdvantageInputs(rewards=torch.tensor([1.0]), group_ids=torch.tensor([0]), mask=mask, prompt_keys=["a"],
                             old_logprobs=old, values=torch.zeros(1, 3))
    alg.advantages(inputs, ref)
    # token rewards (-0.25, 0, 1 + 0.25); V = 0 so R_t = sum of the rewards from t on
    torch.testing.assert_close(alg.advantage.returns, torch.tensor([[1.0, 1.25, 1.25]]))


def test_token_weight_composes_with_gae_advantages():
    """A token-level part (STEER) weights the per-token PPO loss built on GAE advantages exactly as on any other."""
    from creditrl.algorithms.registry import TOKEN_WEIGHTS

    plain = Algorithm(AlgorithmConfig(advantage=PartSpec("gae", GAEConfig())))
    steer_spec = PartSpec("steer", TOKEN_WEIGHTS.get("steer").config_cls())
    steered = Algorithm(AlgorithmConfig(advantage=PartSpec("gae", GAEConfig()), token_weights=[steer_spec]))
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 5)
    adv, _ = plain.advantages(AdvantageInputs(rewards=torch.tensor([1.0, 0.0, 1.0, 0.0]),
                                              group_ids=torch.arange(4), mask=mask, prompt_keys=list("abcd"),
                                              values=torch.rand(4, 5, generator=gen)))
    old = -torch.rand(4, 5, generator=gen) - 0.1
    logp = (old + 0.05 * torch.randn(4, 5, generator=gen)).requires_grad_(True)
    ent = torch.rand(4, 5, generator=gen) * 2
    inputs = LossInputs(logprobs=logp, old_logprobs=old, advantages=adv, mask=mask, entropy=ent, old_entropy=ent,
                        group_ids=torch.arange(4))
    base_loss, _ = plain.loss(inputs, AggregationNorm())
    steer_loss, metrics = steered.loss(inputs, AggregationNorm())
    per_token, _ = plain.policy_loss(inputs)
    weights, new_mask, _ = steered.token_weights[0](inputs)
    assert new_mask is None
    torch.testing.assert_close(steer_loss, (per_token * weights).sum() / mask.sum())
    assert not torch.allclose(steer_loss, base_loss)  # the weights do act on the GAE-advantage loss
