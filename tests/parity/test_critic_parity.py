"""The critic (PPO with GAE) on both backends: the single-process `LocalCritic` + `LocalLearner` and the Ray
`RayCritic` + a 2-rank DeepSpeed ZeRO-2 `LearnerGroup` (the value model in its own engine in each rank) run the
loop's learner stages (`creditrl.trainer.loop.learn` with a critic: old pass, values, GAE, critic update, policy
update) on the same fixed batch (tests/parity/test_learner_parity.py `fixed_batch`), twice, so the second step runs
on the critic and policy the first step updated. Every metric (critic/* and actor/*), V_old, the GAE returns and the
advantages agree within the parity tolerance of test_learner_parity (RTOL 1e-4, ATOL 1e-6, justified there: fp32
summation order of per-rank gradient accumulation + all-reduce vs one process)."""

from __future__ import annotations

import copy

import pytest
import torch

from creditrl.algorithms import Algorithm
from tests.parity.test_learner_parity import (  # noqa: F401  (fixtures)
    ATOL, ONE_ROW, RAY_LEARNER, RTOL, TOTAL_STEPS, _cfg, _close, fixed_batch, tokenizer,
)

CRITIC = ("critic.warmup_steps=0", "critic.lr=1e-3")


@pytest.fixture(scope="module")
def critic_group(local_ray, tiny_files, sharp_model, tokenizer):
    from creditrl.distributed.learner_group import LearnerGroup
    from creditrl.distributed.placement import make_placement

    cfg = _cfg(tiny_files, sharp_model, "tiny_ppo", ONE_ROW, *CRITIC, *RAY_LEARNER)
    placement = make_placement(cfg.resources, 120)
    group = LearnerGroup(cfg, TOTAL_STEPS, tokenizer.pad_token_id, placement.learner)
    yield cfg, group
    group.shutdown()
    placement.remove()


def test_critic_step_matches_on_both_backends(critic_group, tiny_files, sharp_model, tokenizer, fixed_batch):
    from creditrl.distributed.critic import RayCritic
    from creditrl.learner.critic_local import LocalCritic
    from creditrl.learner.local import LocalLearner
    from creditrl.trainer.loop import learn

    cfg_ray, group = critic_group
    cfg = _cfg(tiny_files, sharp_model, "tiny_ppo", ONE_ROW, *CRITIC)
    alg_local, alg_ray = Algorithm(cfg.algorithm), Algorithm(cfg_ray.algorithm)
    local = LocalLearner(cfg, alg_local, TOTAL_STEPS, tokenizer.pad_token_id)
    local_critic, ray_critic = LocalCritic(cfg, tokenizer.pad_token_id), RayCritic(cfg_ray, group)
    values = []
    for step in (1, 2):
        b_local, b_ray = copy.deepcopy(fixed_batch), copy.deepcopy(fixed_batch)
        m_local = learn(b_local, local, alg_local, {}, local_critic)
        m_ray = learn(b_ray, group, alg_ray, {}, ray_critic)
        assert set(m_local) == set(m_ray), set(m_local) ^ set(m_ray)
        assert {"critic/value_loss", "critic/explained_variance", "critic/grad_norm", "actor/grad_norm"} <= set(m_local)
        off = {k: (m_local[k], m_ray[k]) for k in m_local if not _close(m_local[k], m_ray[k])}
        assert not off, f"step {step}: local vs Ray metrics differ: {off}"
        for key in ("old_values", "returns"):
            torch.testing.assert_close(b_ray.stats[key], b_local.stats[key], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(b_ray.advantages, b_local.advantages, rtol=RTOL, atol=ATOL)
        assert m_local["critic/grad_norm"] > 0 and m_local["actor/grad_norm"] > 0 and m_local["critic/warmup"] == 0
        values.append(b_local.stats["old_values"])
    assert not torch.equal(values[0], values[1]), "the first critic update changed nothing"
    assert ray_critic.progress.updates == local_critic.progress.updates == 2
