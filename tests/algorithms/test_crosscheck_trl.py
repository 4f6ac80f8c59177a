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


def trl_loss(lp, old, adv_seq, mask, ref=None, *, loss_type, eps_low=0.2, eps_high=0.2, level="token", beta=0.0,
             delta=None, bias_correction_kl=False, sapo_pos=1.0, sapo_neg=1.05, trainer_cls=None):
    """TRL 1.16 `_compute_loss` on prepared log-probs; returns (loss, grad w.r.t. lp)."""
    trainer_cls = trainer_cls or trl_grpo.GRPOTrainer
    trainer = trainer_cls.__new__(trainer_cls)
    x = lp.clone().requires_grad_()
    trainer.__dict__.update(
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, beta=beta, importance_sampling_level=level,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, max_completion_length=T, current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True), _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), accelerator=_Accelerator(),
        args=SimpleNamespace(delta=delta, use_bias_correction_kl=bias_correction_kl, steps_per_generation=1,
                             sapo_temperature_pos=sapo_pos, sapo_temperature_neg=sapo_neg),
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


def ppo(lo=0.2, hi=0.2, dual_clip=None):
    return PartSpec("ppo_clip", POLICY_LOSSES.get("ppo_clip").config_cls(clip_low=lo, clip_high=hi,
                                                                           dual_clip=dual_clip))


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


# ---- issue 14: TRL delta = dual clip, SAPO, GMPO, bias-corrected k3, batch std scaling, normalize_then_sum -------
import inspect  # noqa: E402
import textwrap  # noqa: E402

from creditrl.algorithms.grpo import grpo_advantages, normalize_then_sum_advantages  # noqa: E402
from creditrl.algorithms.kl import kl_penalty  # noqa: E402

# TRL's `nanstd` computes Bessel's correction count / (count - 1) from integer tensors, i.e. in float32, so its
# std carries a ~1e-8 relative rounding error even on float64 rewards.
ADV_RTOL = 1e-7


@pytest.mark.parametrize("delta,hi", [(3.0, 0.2), (1.5, 0.28), (10.0, 0.28)])
def test_trl_delta_is_dual_clip(delta, hi):
    lp, old, adv, mask, _ = batch(8, drift=1.2)
    r = torch.exp(lp - old)
    assert bool(((r > delta) & (adv.unsqueeze(-1) < 0) & (mask > 0)).any()) or delta == 10.0  # the cap is active
    for agg, trl_type in (("token-mean", "dapo"), ("seq-mean-token-mean", "grpo")):
        assert_same(ours(lp, old, adv, mask, policy_loss=ppo(0.2, hi, dual_clip=delta), loss_agg=agg),
                    trl_loss(lp, old, adv, mask, loss_type=trl_type, eps_high=hi, delta=delta))


def test_trl_delta_differs_from_no_dual_clip():
    lp, old, adv, mask, _ = batch(8, drift=1.2)
    with_delta = trl_loss(lp, old, adv, mask, loss_type="dapo", delta=3.0)
    assert with_delta[0] != pytest.approx(ours(lp, old, adv, mask, policy_loss=ppo(), loss_agg="token-mean")[0])


def f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


@pytest.mark.parametrize("pos,neg,drift", [(1.0, 1.05, 0.4), (0.5, 2.0, 1.0)])
def test_sapo_is_trl_sapo(pos, neg, drift):
    lp, old, adv, mask, _ = batch(9, drift=drift)
    adv[1] = 0.0  # A = 0 takes the negative temperature
    theirs = trl_loss(lp, old, adv, mask, loss_type="sapo", sapo_pos=pos, sapo_neg=neg)
    # TRL's torch.where over two Python floats makes a float32 temperature tensor: 1.05 becomes 1.0499999523.
    # With the same rounded temperatures the two agree to float64 precision; with the exact ones, to ~1e-7.
    for p, n, rtol in ((f32(pos), f32(neg), 1e-10), (pos, neg, 1e-6)):
        sapo = PartSpec("sapo", POLICY_LOSSES.get("sapo").config_cls(tau_pos=p, tau_neg=n))
        assert_same(ours(lp, old, adv, mask, policy_loss=sapo, loss_agg="seq-mean-token-mean"), theirs, rtol=rtol)


@pytest.mark.parametrize("lo,hi,drift", [(0.4, 0.4, 0.8), (0.1, 0.3, 0.5)])
def test_gmpo_is_trl_gmpo_trainer(lo, hi, drift):
    gmpo_mod = pytest.importorskip("trl.experimental.gmpo.gmpo_trainer")
    lp, old, adv, mask, _ = batch(10, drift=drift)
    adv[2] = 0.0
    gmpo = PartSpec("gmpo", POLICY_LOSSES.get("gmpo").config_cls(clip_low=lo, clip_high=hi))
    assert_same(ours(lp, old, adv, mask, policy_loss=gmpo, loss_agg="seq-mean-token-mean"),
                trl_loss(lp, old, adv, mask, loss_type="grpo", eps_low=lo, eps_high=hi,
                         trainer_cls=gmpo_mod.GMPOTrainer))


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("ref_spread", [0.3, 3.0])  # 3: k3's [-10, 10] clamp is active, k3_unclamped has none
def test_unclamped_k3_and_bias_correction_are_trl_kl(bias_correction, ref_spread):
    lp, old, adv, mask, _ = batch(11)
    gen = torch.Generator().manual_seed(12)
    ref = lp + torch.randn(B, T, generator=gen, dtype=torch.float64) * ref_spread
    if ref_spread > 1:
        assert not torch.allclose(kl_penalty(lp, ref, "k3"), kl_penalty(lp, ref, "k3_unclamped"))
    kl = KLConfig(coef=0.04, estimator="k3_unclamped", bias_correction=bias_correction)
    assert_same(ours(lp, old, adv, mask, ref, policy_loss=ppo(0.2, 0.28), loss_agg="token-mean", kl=kl),
                trl_loss(lp, old, adv, mask, ref, loss_type="dapo", eps_high=0.28, beta=0.04,
                         bias_correction_kl=bias_correction))


def _trl_advantage_block():
    """The advantage lines of TRL 1.16 `_generate_and_score_completions` (from the `multi_objective_aggregation`
    branch to the NaN zeroing), as a function of (self, rewards_per_func, num_generations): the advantage math sits
    inside the 400-line generation method, so its own source lines are run on prepared rewards."""
    src = textwrap.dedent(inspect.getsource(trl_grpo.GRPOTrainer._generate_and_score_completions))
    start = src.rindex("\n", 0, src.index('if self.multi_objective_aggregation == "sum_then_normalize":')) + 1
    end = src.index("advantages = torch.nan_to_num(advantages, nan=0.0)")
    body = textwrap.indent(textwrap.dedent(src[start:end]), "    ")
    code = ("def block(self, rewards_per_func, num_generations, device):\n"
            "    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)\n" + body +
            "\n    return torch.nan_to_num(advantages, nan=0.0)\n")
    namespace = {"torch": torch, "nanstd": trl_grpo.nanstd}
    exec(compile(code, "<trl advantage block>", "exec"), namespace)  # noqa: S102
    return namespace["block"]


def trl_advantages(rewards_per_func, weights, n, *, scale_rewards="group", multi="sum_then_normalize"):
    trainer = SimpleNamespace(multi_objective_aggregation=multi, scale_rewards=scale_rewards,
                              reward_weights=weights, reward_funcs=[None] * rewards_per_func.shape[1])
    return _trl_advantage_block()(trainer, rewards_per_func, n, "cpu")


def reward_batch(seed, groups=5, n=4, k=2):
    gen = torch.Generator().manual_seed(seed)
    comps = torch.randint(0, 3, (groups * n, k), generator=gen).to(torch.float64) / 2
    comps[:n, 0] = 1.0  # a group where reward function 0 is constant
    comps[n:2 * n] = 0.5  # a group where every function is constant
    weights = torch.tensor([1.0, 0.3, -0.5][:k], dtype=torch.float64)
    group_ids = torch.arange(groups).repeat_interleave(n)
    mask = (torch.rand(groups * n, 6, generator=gen) > 0.2).to(torch.float64)
    return comps, weights, group_ids, mask, n


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_std_scope_is_trl_scale_rewards(scale):
    comps, weights, group_ids, mask, n = reward_batch(13)
    theirs = trl_advantages(comps, weights, n, scale_rewards=scale)
    rewards = (comps * weights).sum(-1)
    mine = grpo_advantages(rewards, group_ids, mask, norm_by_std=scale != "none", eps=1e-4,
                           std_scope="batch" if scale == "batch" else "group")
    torch.testing.assert_close(mine, theirs.unsqueeze(-1) * mask, rtol=ADV_RTOL, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_normalize_then_sum_is_trl(k):
    comps, weights, group_ids, mask, n = reward_batch(14 + k, k=k)
    theirs = trl_advantages(comps, weights, n, multi="normalize_then_sum")
    mine = normalize_then_sum_advantages(comps, weights, group_ids, mask, eps=1e-4)
    torch.testing.assert_close(mine, theirs.unsqueeze(-1) * mask, rtol=ADV_RTOL, atol=1e-12)
    # through the registered part, with the per-function rewards in AdvantageInputs
    from creditrl.algorithms import ADVANTAGES
    from creditrl.algorithms.base import AdvantageInputs

    part = ADVANTAGES.build("grpo", ADVANTAGES.get("grpo").config_cls(multi_objective="normalize_then_sum", eps=1e-4))
    inputs = AdvantageInputs(rewards=(comps * weights).sum(-1), group_ids=group_ids, mask=mask,
                             prompt_keys=[""] * len(group_ids), reward_components=comps, reward_weights=weights)
    torch.testing.assert_close(part(inputs)[0], theirs.unsqueeze(-1) * mask, rtol=ADV_RTOL, atol=1e-12)
