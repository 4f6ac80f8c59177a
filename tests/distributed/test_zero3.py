"""ZeRO-3 (parameters partitioned over 2 ranks): old log-probs, loss and gradient norm still equal the
single-process learner's, and the bucketed gathers give the full weights. Slow: starts 2 DeepSpeed ranks."""

from __future__ import annotations

import copy

import pytest
import torch

from creditrl.algorithms import Algorithm
from tests.distributed.test_groups import _adv, _batch, _cfg

pytestmark = pytest.mark.slow


def test_zero3_learner_matches_single_process_learner(local_ray, tiny_files):
    from creditrl.distributed.learner_group import LearnerGroup
    from creditrl.distributed.placement import make_placement
    from creditrl.rollout.hf_engine import HFGenerateEngine
    from creditrl.learner.local import LocalLearner
    from creditrl.models.build import load_tokenizer

    cfg = _cfg(tiny_files, "resources.zero_stage=3")
    tok = load_tokenizer(str(tiny_files.model))
    local_cfg = copy.deepcopy(cfg)
    local_cfg.resources.backend = "local"
    algorithm = Algorithm(cfg.algorithm)
    local = LocalLearner(local_cfg, algorithm, 10, tok.pad_token_id)
    batch = _batch(cfg, tok, tiny_files, HFGenerateEngine(local.policy, tok.pad_token_id, tok.eos_token_id))
    placement = make_placement(cfg.resources, 120)
    learner = LearnerGroup(cfg, 10, tok.pad_token_id, placement.learner)
    try:
        full = dict(learner.named_weights())  # gathered from the shards, before any update
        for n, p in local.policy.named_parameters():
            assert torch.equal(full[n], p.detach()), n
        b_local, b_dist = copy.deepcopy(batch), copy.deepcopy(batch)
        local.compute_old_stats(b_local, algorithm)
        learner.compute_old_stats(b_dist, algorithm)
        torch.testing.assert_close(b_dist.stats["old_logprobs"], b_local.stats["old_logprobs"], rtol=0, atol=1e-5)
        for b in (b_local, b_dist):
            b.advantages, _ = algorithm.advantages(_adv(b), None)
        m_local = local.update(b_local, algorithm)
        m_dist = learner.update(b_dist, algorithm)
        assert m_local["actor/grad_norm"] > 0
        assert m_dist["actor/grad_norm"] == pytest.approx(m_local["actor/grad_norm"], rel=1e-4)
        assert m_dist["actor/pg_loss"] == pytest.approx(m_local["actor/pg_loss"], rel=1e-4, abs=1e-7)
        after = dict(learner.named_weights())
        diffs = torch.cat([(after[n] - p.detach()).abs().flatten() for n, p in local.policy.named_parameters()])
        assert (diffs > 1e-5).float().mean() < 0.01
    finally:
        learner.shutdown()
        placement.remove()
