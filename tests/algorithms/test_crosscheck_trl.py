"""Numeric cross-check against TRL 1.16 `GRPOTrainer._compute_loss` on random float64 inputs (algorithms.md 18,
install.md 7). Skipped unless `trl` is installed (`pip install -c constraints.txt trl==1.16.0`).

TRL's loss is a method, so it is driven without a model: the trainer object is created with `__new__`, the
attributes `_compute_loss` reads are set by hand, the accelerator is a single-process stub and the log-prob
forward is replaced by the prepared tensors. Each creditrl composition is compared on the loss value and on its
gradient w.r.t. the current log-probs.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

from creditrl.algorithms import POLICY_LOSSES, Algorithm, AlgorithmConfig, KLConfig  # noqa: E402
from creditrl.algorithms.base import LossInputs  # noqa: E402
from creditrl.registry import PartSpec  # noqa: E402

B, T = 6, 7


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def trl_loss(lp, old, adv_seq, mask, ref=None, *, loss_type, eps_low=0.2, eps_high=0.2, level="token", beta=0.0):
    """TRL 1.16 `_compute_loss` on prepared log-probs; returns (loss, grad w.r.t. lp)."""
    trainer = trl_grpo.GRPOTrainer.__new__(trl_grpo.GRPOTrainer)
    x = lp.clone().requires_grad_()
    trainer.__dict__.update(
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, beta=beta, importance_sampling_level=level,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, max_completion_length=T, current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True), _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), accelerator=_Accelerator(),
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
    )
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (x, torch.zeros_like(x), None)
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv_seq, "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    return loss.item(), x.grad


def ours(lp, old, adv_seq, mask, ref=None, **cfg):
    algo = Algorithm(AlgorithmConfig(**cfg))
    x = lp.clone().requires_grad_()
    inputs = LossInputs(logprobs=x, old_logprobs=old, advantages=adv_seq.unsqueeze(-1) * mask, mask=mask,
                        ref_logprobs=ref)
    loss, _ = algo.loss(inputs)
    loss.backward()
    return loss.item(), x.grad


def batch(seed, drift=0.4, empty_row=False):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    lp = old + torch.randn(B, T, generator=gen, dtype=torch.float64) * drift
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    if empty_row:
        lens[0] = 0
    mask = (torch.arange(T).unsqueeze(0) < lens.unsqueeze(1)).to(torch.float64)
    ref = old + torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.3
    return lp, old, adv, mask, ref


def ppo(lo=0.2, hi=0.2):
    return PartSpec("ppo_clip", POLICY_LOSSES.get("ppo_clip").config_cls(clip_low=lo, clip_high=hi, dual_clip=None))


def assert_same(a, b, rtol=1e-10):
    assert a[0] == pytest.approx(b[0], rel=rtol, abs=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_dapo_token_mean(seed):
    lp, old, adv, mask, _ = batch(seed)
    assert_same(ours(lp, old, adv, mask, policy_loss=ppo(0.2, 0.28), loss_agg="token-mean"),
                trl_loss(lp, old, adv, mask, loss_type="dapo", eps_high=0.28))


def test_bnpo_is_token_mean():
    lp, old, adv, mask, _ = batch(2)
    assert_same(ours(lp, old, adv, mask, policy_loss=ppo(), loss_agg="token-mean"),
                trl_loss(lp, old, adv, mask, loss_type="bnpo"))


def test_grpo_is_seq_mean_token_mean_and_differs_only_on_empty_rows():
    lp, old, adv, mask, _ = batch(3)
    assert_same(ours(lp, old, adv, mask, policy_loss=ppo(), loss_agg="seq-mean-token-mean"),
                trl_loss(lp, old, adv, mask, loss_type="grpo"))
    lp, old, adv, mask, _ = batch(3, empty_row=True)
    mine = ours(lp, old, adv, mask, policy_loss=ppo(), loss_agg="seq-mean-token-mean")
    theirs = trl_loss(lp, old, adv, mask, loss_type="grpo")
    # documented difference: TRL counts the empty response in the mean over sequences, creditrl (and verl) do not
    assert theirs[0] == pytest.approx(mine[0] * (B - 1) / B, rel=1e-10)


def test_dr_grpo_is_seq_mean_token_sum_norm_with_max_length():
    lp, old, adv, mask, _ = batch(4)
    assert_same(ours(lp, old, adv, mask, policy_loss=ppo(), loss_agg="seq-mean-token-sum-norm", loss_agg_norm_len=T),
                trl_loss(lp, old, adv, mask, loss_type="dr_grpo"))


def test_gspo_is_trl_sequence_level_grpo():
    lp, old, adv, mask, _ = batch(5, drift=0.05)
    gspo = PartSpec("gspo", POLICY_LOSSES.get("gspo").config_cls(clip_low=3e-4, clip_high=4e-4))
    assert_same(ours(lp, old, adv, mask, policy_loss=gspo, loss_agg="seq-mean-token-mean"),
                trl_loss(lp, old, adv, mask, loss_type="grpo", eps_low=3e-4, eps_high=4e-4, level="sequence"))


@pytest.mark.parametrize("cap", [5.0, 1.3])
def test_cispo_clip_high_is_trl_epsilon_high_minus_one(cap):
    lp, old, adv, mask, _ = batch(6, drift=0.8)
    cispo = PartSpec("cispo", POLICY_LOSSES.get("cispo").config_cls(clip_low=None, clip_high=cap - 1.0))
    assert_same(ours(lp, old, adv, mask, policy_loss=cispo, loss_agg="token-mean"),
                trl_loss(lp, old, adv, mask, loss_type="cispo", eps_high=cap))


def test_k3_kl_loss_term():
    lp, old, adv, mask, ref = batch(7)
    assert_same(ours(lp, old, adv, mask, ref, policy_loss=ppo(0.2, 0.28), loss_agg="token-mean",
                     kl=KLConfig(coef=0.04, estimator="k3")),
                trl_loss(lp, old, adv, mask, ref, loss_type="dapo", eps_high=0.28, beta=0.04))
