"""Clip-Cov and KL-Cov (algorithms.md 2.8, 2.9, 17.1, 17.2) against float64 references of the covariance
selection, per micro-batch (reference) and over a token_stat_scope."""

import json
import math

import pytest
import torch

from creditrl.algorithms import POLICY_LOSSES, Algorithm, AlgorithmConfig
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.clip_cov import ClipCovConfig, clip_cov_loss, clip_cov_scope_stats
from creditrl.algorithms.covariance import token_covariance
from creditrl.algorithms.kl_cov import KLCovConfig, kl_cov_loss
from creditrl.registry import PartSpec


def reference_cov(lp, adv, mask):
    pairs = [(i, t) for i in range(len(mask)) for t in range(len(mask[0])) if mask[i][t] > 0]
    mean_a = sum(adv[i][t] for i, t in pairs) / len(pairs)
    mean_l = sum(lp[i][t] for i, t in pairs) / len(pairs)
    return {(i, t): (adv[i][t] - mean_a) * (lp[i][t] - mean_l) for i, t in pairs}


def ppo_token(lp, old, a, lo, hi):
    r = math.exp(lp - old)
    return max(-a * r, -a * min(max(r, 1 - lo), 1 + hi)), (-a * r) < (-a * min(max(r, 1 - lo), 1 + hi))


def random_batch(seed, B=4, T=8, spread=1.5):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 4
    lp = old + torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.1
    adv = torch.randn(B, T, generator=gen, dtype=torch.float64) * spread
    mask = (torch.rand(B, T, generator=gen) > 0.15).to(torch.float64)
    return lp, old, adv, mask


def test_token_covariance_matches_reference_and_is_detached():
    lp, _, adv, mask = random_batch(0)
    lp.requires_grad_()
    cov = token_covariance(lp, adv, mask)
    ref = reference_cov(lp.tolist(), adv.tolist(), mask.tolist())
    for (i, t), v in ref.items():
        assert cov[i, t].item() == pytest.approx(v, abs=1e-12)
    assert torch.all(cov[mask == 0] == 0) and not cov.requires_grad


# ---- Clip-Cov ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [2e-4, 0.1, 1.0])
def test_clip_cov_zeroes_k_random_candidates_and_keeps_ppo_elsewhere(ratio):
    lp, old, adv, mask = random_batch(1)
    lb, ub = 0.05, 5.0
    loss, metrics = clip_cov_loss(lp, old, adv, mask, 0.2, 0.2, ratio, lb, ub, torch.Generator().manual_seed(0))
    cov = reference_cov(lp.tolist(), adv.tolist(), mask.tolist())
    candidates, zeroed = set(), set()
    for (i, t), c in cov.items():
        value, clipped = ppo_token(lp[i, t].item(), old[i, t].item(), adv[i, t].item(), 0.2, 0.2)
        if not clipped and lb < c < ub:
            candidates.add((i, t))
        if loss[i, t].item() == 0.0 and value != 0.0:
            zeroed.add((i, t))
        else:
            assert loss[i, t].item() == pytest.approx(value, abs=1e-12)
    k = max(1, int(ratio * mask.sum().item()))
    assert len(candidates) >= 2
    assert zeroed <= candidates and len(zeroed) == min(k, len(candidates))
    assert metrics["clip_cov/selected_frac"].item() == pytest.approx(len(zeroed) / mask.sum().item())
    assert metrics["clip_cov/candidate_frac"].item() == pytest.approx(len(candidates) / mask.sum().item())
    assert torch.all(loss[mask == 0] == 0)


def test_clip_cov_hand_case_and_seeded_determinism():
    # A = [2, -2, 2, -2, 0, 0], l - mean(l) = [.5, -.5, 1.5, -1.5, 0, 0] -> cov = [1, 1, 3, 3, 0, 0]; r = 1
    adv = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.0, 0.0]], dtype=torch.float64)
    lp = torch.tensor([[0.5, -0.5, 1.5, -1.5, 0.0, 0.0]], dtype=torch.float64) - 3.0
    mask = torch.ones(1, 6, dtype=torch.float64)

    def zeroed(seed):
        loss, _ = clip_cov_loss(lp, lp, adv, mask, generator=torch.Generator().manual_seed(seed))
        return tuple(t for t in range(6) if loss[0, t] == 0 and adv[0, t] != 0)

    picks = {zeroed(s) for s in range(20)}
    assert picks == {(2,), (3,)}  # cov == 1 is not > lb; one of the two cov-3 tokens, each for some seed
    assert all(zeroed(7) == zeroed(7) for _ in range(3))
    part = POLICY_LOSSES.build("clip_cov", ClipCovConfig(seed=7))
    inputs = LossInputs(logprobs=lp, old_logprobs=lp, advantages=adv, mask=mask)
    first = part(inputs)[0]
    again = POLICY_LOSSES.build("clip_cov", ClipCovConfig(seed=7))(inputs)[0]
    torch.testing.assert_close(first, again)


def test_clip_cov_excludes_already_clipped_tokens_and_no_candidates_is_plain_ppo():
    adv = torch.tensor([[2.0, -2.0, 2.0, -2.0]], dtype=torch.float64)
    lp = torch.tensor([[0.5, -0.5, 1.5, -1.5]], dtype=torch.float64) - 3.0
    old = lp.clone()
    old[0, 2] -= 1.0  # r = e > 1.2 with A > 0: PPO-clipped, so not a Clip-Cov candidate any more
    loss, metrics = clip_cov_loss(lp, old, adv, torch.ones(1, 4, dtype=torch.float64), clip_cov_ratio=1.0,
                                  clip_cov_lb=2.0, generator=torch.Generator().manual_seed(0))
    assert loss[0, 3].item() == 0.0 and loss[0, 2].item() == pytest.approx(-2.0 * 1.2)
    assert metrics["pg_clipfrac"].item() == pytest.approx(0.25)
    empty, m = clip_cov_loss(lp, lp, adv, torch.zeros(1, 4, dtype=torch.float64))
    assert torch.all(empty == 0) and m["clip_cov/selected_frac"].item() == 0.0


def test_clip_cov_gradient_is_zero_on_selected_tokens_and_gradcheck():
    lp, old, adv, mask = random_batch(2, B=2, T=6)
    args = (old, adv, mask, 0.2, 0.2, 0.3, 0.05, 5.0)
    x = lp.clone().requires_grad_()
    loss, _ = clip_cov_loss(x, *args, generator=torch.Generator().manual_seed(0))
    loss.sum().backward()
    dropped = (loss == 0) & (mask > 0) & (adv != 0)
    assert dropped.any() and torch.all(x.grad[dropped] == 0)
    torch.autograd.gradcheck(lambda y: clip_cov_loss(y, *args, generator=torch.Generator().manual_seed(0))[0],
                             (lp.clone().requires_grad_(),))


def test_clip_cov_validation():
    with pytest.raises(ValueError, match="clip_cov_ratio"):
        ClipCovConfig(clip_cov_ratio=0.0)
    with pytest.raises(ValueError, match="clip_cov_lb"):
        ClipCovConfig(clip_cov_lb=5.0, clip_cov_ub=1.0)


def _clip_cov_algorithm(seed: int = 3) -> Algorithm:
    options = ClipCovConfig(clip_cov_ratio=0.25, clip_cov_lb=-1e9, clip_cov_ub=1e9, seed=seed)
    return Algorithm(AlgorithmConfig(policy_loss=PartSpec("clip_cov", options)))


def _selected(alg: Algorithm, batch) -> torch.Tensor:
    lp, old, adv, mask = batch
    per_token = alg.policy_loss(LossInputs(lp, old, adv, mask))[0]  # one draw from the part's current stream
    return (per_token == 0) & (mask > 0) & (adv != 0)


def test_clip_cov_stream_is_checkpointed_and_resumes_exactly():
    batch = random_batch(11)
    full = _clip_cov_algorithm()
    full.begin_update(0)
    _selected(full, batch)
    saved = full.state_dict()
    expected = [_selected(full, batch) for _ in range(3)]
    resumed = _clip_cov_algorithm()
    resumed.load_state_dict(saved)
    resumed.begin_update(0)
    assert [torch.equal(a, _selected(resumed, batch)) for a in expected] == [True] * 3
    restarted = _clip_cov_algorithm()  # without the state the stream restarts: a different selection
    restarted.begin_update(0)
    assert not all(torch.equal(a, _selected(restarted, batch)) for a in expected)


def test_clip_cov_one_stream_per_rank_merged_by_load_state_dict():
    batch = random_batch(12)
    driver = _clip_cov_algorithm()
    ranks = [_clip_cov_algorithm() for _ in range(2)]  # the copies the DeepSpeed ranks unpickle
    for r, alg in enumerate(ranks):
        alg.load_state_dict(driver.state_dict())
        alg.begin_update(r)
    picks = [_selected(alg, batch) for alg in ranks]
    assert not torch.equal(picks[0], picks[1])  # the ranks draw different numbers
    states = [alg.state_dict()["parts"]["policy_loss"]["streams"] for alg in ranks]
    assert [set(s) for s in states] == [{"0"}, {"1"}]  # each rank reports only its own stream
    for alg in ranks:
        driver.load_state_dict(alg.state_dict())
    merged = driver.state_dict()["parts"]["policy_loss"]["streams"]
    assert merged == {"0": states[0]["0"], "1": states[1]["1"]}
    # rank 0 of a fresh single-process learner starts from the same stream as DeepSpeed rank 0
    local = _clip_cov_algorithm()
    local.begin_update(0)
    assert torch.equal(_selected(local, batch), picks[0])
    assert json.loads(json.dumps(driver.state_dict())) == driver.state_dict()  # JSON-safe
    # a state from another algorithm is an error that says what to do
    with pytest.raises(ValueError, match="resume with the recipe"):
        Algorithm(AlgorithmConfig()).load_state_dict(driver.state_dict())


# ---- KL-Cov ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,kappa", [(2e-4, 0.1), (0.2, 1.0), (1.0, 0.5)])
def test_kl_cov_penalises_the_top_k_covariance_tokens(ratio, kappa):
    lp, old, adv, mask = random_batch(3)
    loss, metrics = kl_cov_loss(lp, old, adv, mask, ratio, kappa)
    cov = reference_cov(lp.tolist(), adv.tolist(), mask.tolist())
    k = max(1, int(len(cov) * ratio))
    top = set(sorted(cov, key=cov.get, reverse=True)[:k])
    for (i, t) in cov:
        d = lp[i, t].item() - old[i, t].item()
        expected = -adv[i, t].item() * math.exp(d) + (kappa * abs(d) if (i, t) in top else 0.0)
        assert loss[i, t].item() == pytest.approx(expected, abs=1e-12)
    assert torch.all(loss[mask == 0] == 0)
    assert metrics["kl_cov/selected_frac"].item() == pytest.approx(k / len(cov))
    abs_kl = sum(abs(lp[i, t].item() - old[i, t].item()) for i, t in cov) / len(cov)
    assert metrics["kl_cov/abs_kl"].item() == pytest.approx(abs_kl)


def test_kl_cov_gradcheck_and_empty_mask():
    lp, old, adv, mask = random_batch(4, B=2, T=5)
    torch.autograd.gradcheck(lambda x: kl_cov_loss(x, old, adv, mask, 0.3, 1.0)[0], (lp.clone().requires_grad_(),))
    loss, metrics = kl_cov_loss(lp, old, adv, torch.zeros_like(mask))
    assert torch.all(loss == 0) and metrics["kl_cov/selected_frac"].item() == 0.0


def test_kl_cov_registered_part_and_validation():
    lp, old, adv, mask = random_batch(5)
    part = POLICY_LOSSES.build("kl_cov", KLCovConfig(kl_cov_ratio=0.1, ppo_kl_coef=1.0))
    loss, _ = part(LossInputs(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask))
    torch.testing.assert_close(loss, kl_cov_loss(lp, old, adv, mask, 0.1, 1.0)[0])
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        KLCovConfig(kl_cov_ratio=2.0)
    with pytest.raises(ValueError, match="ppo_kl_coef"):
        KLCovConfig(ppo_kl_coef=-1.0)


# ---- token_stat_scope mini_batch / global ---------------------------------------------------------------------
def test_kl_cov_scope_selects_the_top_k_of_the_whole_scope():
    lp, old, adv, mask = random_batch(6, B=6, T=8)
    ratio, kappa = 0.1, 1.0
    algo = Algorithm(AlgorithmConfig(policy_loss=PartSpec("kl_cov", KLCovConfig(ratio, kappa)),
                                     token_stat_scope="mini_batch"))
    scope = LossInputs(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask)
    algo.prepare(scope)
    cov = reference_cov(lp.tolist(), adv.tolist(), mask.tolist())  # means over the whole scope
    k = max(1, int(len(cov) * ratio))
    top = set(sorted(cov, key=cov.get, reverse=True)[:k])
    for rows in (slice(0, 2), slice(2, 6)):
        part = algo.policy_loss(LossInputs(logprobs=lp[rows], old_logprobs=old[rows], advantages=adv[rows],
                                           mask=mask[rows]))[0]
        for (i, t) in cov:
            if rows.start <= i < rows.stop:
                d = lp[i, t].item() - old[i, t].item()
                expected = -adv[i, t].item() * math.exp(d) + (kappa * abs(d) if (i, t) in top else 0.0)
                assert part[i - rows.start, t].item() == pytest.approx(expected, abs=1e-12)


def test_clip_cov_scope_selection_probability():
    lp, old, adv, mask = random_batch(7, B=6, T=8)
    stats = clip_cov_scope_stats(lp, old, adv, mask, 0.2, 0.2, 0.05, 0.05, 5.0)
    cov = reference_cov(lp.tolist(), adv.tolist(), mask.tolist())
    candidates = {key for key, c in cov.items()
                  if 0.05 < c < 5.0 and not ppo_token(lp[key].item(), old[key].item(), adv[key].item(), 0.2, 0.2)[1]}
    k = max(1, int(0.05 * len(cov)))
    assert stats.means.n_valid == len(cov)
    assert stats.select_prob == pytest.approx(min(1.0, k / len(candidates)))
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros_like(mask)
    for _ in range(400):
        loss, _ = clip_cov_loss(lp, old, adv, mask, 0.2, 0.2, 0.05, 0.05, 5.0, gen, stats)
        hits += ((loss == 0) & (mask > 0) & (adv != 0)).to(hits.dtype)
    for key in cov:
        if key in candidates:
            assert hits[key].item() / 400 == pytest.approx(stats.select_prob, abs=0.1)
        else:
            assert hits[key].item() == 0
    sure = clip_cov_scope_stats(lp, old, adv, mask, 0.2, 0.2, 1.0, 0.05, 5.0)
    assert sure.select_prob == 1.0


def test_scoped_parts_require_prepare():
    lp, old, adv, mask = random_batch(8)
    inputs = LossInputs(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask)
    for name in ("clip_cov", "kl_cov"):
        part = POLICY_LOSSES.build(name)
        part.scope = "global"
        with pytest.raises(RuntimeError, match="prepare"):
            part(inputs)
        part.prepare(inputs)
        loss, _ = part(inputs)
        assert torch.isfinite(loss).all()
