"""The on-policy shortcut (issue 15, `train.skip_old_pass`, creditrl/learner/core.py `skips_old_pass`): with one
epoch of one mini-batch the policy's old-log-prob pass is left out and pi_old is taken from the update's own
forward. Guarded here on the fixed batch of tests/parity/test_learner_parity.py:

* locally, the shortcut gives exactly the full path's results: bit-identical updated weights, the same metric keys
  and values (the old pass's `actor/entropy` and `mismatch/*` included), the same `old_logprobs` / `old_entropy`;
* on Ray (2 DeepSpeed ranks) with the shortcut, the parity tolerance of test_learner_parity against the local
  full path (different summation order across ranks, as for every Ray comparison);
* where pi_old is needed before the update (fused-op statistics, hidden states, global token scope, KL in the
  reward, several mini-batches or epochs) the old pass still runs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from creditrl.algorithms import Algorithm
from tests.parity.test_learner_parity import (  # noqa: F401  (fixtures)
    ATOL, ONE_ROW, RAY_LEARNER, RTOL, TOTAL_STEPS, UPDATE_RTOL, _cfg, _close, _update_gap, fixed_batch, tokenizer,
)

ONE_MINI = ("train.mini_batch_prompts=4",)  # the whole step batch: one optimizer step
RECIPES = ["tiny_grpo", "tiny_steer", "tiny_tis", "tiny_dcpo", "tiny_kl_bias_corrected", "tiny_gspo", "tiny_cispo",
           "tiny_hapo"]


def _run(cfg, batch, tokenizer):
    from creditrl.learner.local import LocalLearner
    from creditrl.trainer.loop import learn

    alg = Algorithm(cfg.algorithm)
    learner = LocalLearner(cfg, alg, TOTAL_STEPS, tokenizer.pad_token_id)
    b = copy.deepcopy(batch)
    return learn(b, learner, alg, {}), b, dict(learner.named_weights()), alg


@pytest.mark.parametrize("recipe", RECIPES)
def test_shortcut_equals_the_full_path(recipe, tiny_files, sharp_model, tokenizer, fixed_batch):
    from creditrl.learner.core import plan_batch, skips_old_pass

    fast_cfg = _cfg(tiny_files, sharp_model, recipe, ONE_ROW, *ONE_MINI)
    full_cfg = _cfg(tiny_files, sharp_model, recipe, ONE_ROW, *ONE_MINI, "train.skip_old_pass=false")
    assert skips_old_pass(fast_cfg, Algorithm(fast_cfg.algorithm), plan_batch(fixed_batch, fast_cfg))
    m_fast, b_fast, w_fast, _ = _run(fast_cfg, fixed_batch, tokenizer)
    m_full, b_full, w_full, _ = _run(full_cfg, fixed_batch, tokenizer)
    assert set(m_fast) == set(m_full)
    assert {"actor/entropy", "mismatch/logprob_abs_diff_mean", "actor/grad_norm"} <= set(m_fast)
    assert m_full["actor/grad_norm"] > 0
    diff = {k: (m_fast[k], m_full[k]) for k in m_fast if m_fast[k] != m_full[k]}
    assert not diff, f"{recipe}: shortcut vs full path metrics differ: {diff}"
    for key in ("old_logprobs", "old_entropy"):
        assert torch.equal(b_fast.stats[key], b_full.stats[key]), key
    assert torch.equal(b_fast.advantages, b_full.advantages)
    for name in w_full:
        assert torch.equal(w_fast[name], w_full[name]), f"{recipe}: updated weights differ: {name}"


@pytest.mark.parametrize("recipe, extra", [
    ("tiny_lp_reg", ()),  # fused-op statistics of pi_old
    ("tiny_composed", ()),  # Lp-Reg inside
    ("tiny_thr", ()),  # pi_old hidden states
    ("tiny_grpo", ("algorithm.token_stat_scope=global",)),
    ("tiny_grpo", ("algorithm.kl.coef=0.01", "algorithm.kl.placement=reward")),
    ("tiny_grpo", ("train.mini_batch_prompts=2",)),  # two optimizer steps: the second is off-policy
    ("tiny_grpo", ("train.ppo_epochs=2",)),
    ("tiny_grpo", ("train.skip_old_pass=false",)),
])
def test_the_old_pass_runs_where_pi_old_is_needed_first(recipe, extra, tiny_files, sharp_model, fixed_batch):
    from creditrl.learner.core import plan_batch, skips_old_pass

    cfg = _cfg(tiny_files, sharp_model, recipe, ONE_ROW, *ONE_MINI, *extra)
    assert not skips_old_pass(cfg, Algorithm(cfg.algorithm), plan_batch(fixed_batch, cfg))


def test_shortcut_on_ray_matches_the_local_full_path(local_ray, tiny_files, sharp_model, tokenizer, fixed_batch):
    from creditrl.distributed.learner_group import LearnerGroup
    from creditrl.distributed.placement import make_placement
    from creditrl.trainer.loop import learn

    cfg_ray = _cfg(tiny_files, sharp_model, "tiny_steer", ONE_ROW, *ONE_MINI, *RAY_LEARNER)
    full_cfg = _cfg(tiny_files, sharp_model, "tiny_steer", ONE_ROW, *ONE_MINI, "train.skip_old_pass=false")
    m_full, b_full, w_full, _ = _run(full_cfg, fixed_batch, tokenizer)
    placement = make_placement(cfg_ray.resources, 120)
    group = LearnerGroup(cfg_ray, TOTAL_STEPS, tokenizer.pad_token_id, placement.learner)
    try:
        w0 = {n: t.clone() for n, t in group.named_weights()}
        b_ray, alg = copy.deepcopy(fixed_batch), Algorithm(cfg_ray.algorithm)
        m_ray = learn(b_ray, group, alg, {})
        w_ray = dict(group.named_weights())
    finally:
        group.shutdown()
        placement.remove()
    assert set(m_ray) == set(m_full)
    off = {k: (m_full[k], m_ray[k]) for k in m_full if not _close(m_full[k], m_ray[k])}
    assert not off, f"Ray shortcut vs local full path: {off}"
    for key in ("old_logprobs", "old_entropy"):
        torch.testing.assert_close(b_ray.stats[key], b_full.stats[key], rtol=RTOL, atol=ATOL)
    gap, size = _update_gap(w0, w_full, w_ray)
    assert size > 0 and gap <= UPDATE_RTOL, gap
