"""Preference training on the Ray backend (2 DeepSpeed ZeRO-2 learner ranks): one `preference_update` equals
the single-process learner's (cDPO: contrastive models on every rank), and `creditrl train` runs the
preference recipes through the same loop on Ray as on the local learner (DPO with LoRA, TDPO2 with its KL
gradient), with the same numbers, checkpoints in DeepSpeed's sharded layout and an exact resume from them.

Cost on 2 idle cores: the learner group about 10 s, each Ray run about 12 s (actor start-up dominates).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from creditrl.config import load_config

LOG2 = math.log(2.0)
RAY = ("resources.backend=ray", "resources.learner_ranks=2", "resources.zero_stage=2", "resources.rollout_actors=1",
       "resources.call_timeout_s=300")


@pytest.fixture(scope="module")
def pair_dir(tiny_files, tmp_path_factory):
    """The tiny task's arithmetic pairs, and cDPO's positive / negative models (random tiny models)."""
    from creditrl.models.tiny import build_tiny_model
    from creditrl.preference.data import write_arithmetic_pairs

    out = tmp_path_factory.mktemp("pairs")
    write_arithmetic_pairs(tiny_files.train_file.parent, out)
    build_tiny_model(out / "pos", seed=1)
    build_tiny_model(out / "neg", seed=2)
    return out


def _overrides(tiny_files, pair_dir, run_dir, *extra: str) -> list[str]:
    return tiny_files.overrides(
        run_dir, f"preference.train_files=[{pair_dir / 'train_pairs.jsonl'}]",
        f"preference.eval_files=[{pair_dir / 'eval_pairs.jsonl'}]", f"preference.cdpo_positive_path={pair_dir / 'pos'}",
        f"preference.cdpo_negative_path={pair_dir / 'neg'}", "train.steps=2", "preference.batch_pairs=8",
        "preference.eval_max_pairs=16", "eval.max_prompts=8", "train.warmup_steps=0", "train.lr=1e-3",
        "train.micro_batch_tokens_per_worker=48", *extra)


def _weights_close(a: dict, b: dict, lr: float) -> None:
    """One AdamW step moves a weight by lr * m/(sqrt(v)+eps) = lr * g/(|g|+eps) (bias-corrected, first step):
    the same on both learners unless a gradient entry is within reduction noise of 0, where its sign (and so
    the step) may flip. Hence: every entry within 2 lr + 1e-6, and all but a few within 1e-5."""
    assert a.keys() == b.keys()
    diffs = torch.cat([(a[n].float() - b[n].float()).abs().flatten() for n in a])
    assert diffs.max() <= 2 * lr + 1e-6
    assert (diffs > 1e-5).float().mean() < 1e-4, f"{int((diffs > 1e-5).sum())} of {diffs.numel()} entries differ"


def test_preference_update_matches_the_local_learner(local_ray, tiny_files, pair_dir):
    """The same 7 pairs (ranks get 4 and 3 pairs in lockstep micro-batches), two cDPO updates (the second one
    off the reference): loss, gradient norm, per-pair metrics and weights of the 2-rank DeepSpeed group equal
    the single-process learner's; so do the held-out pair metrics."""
    from creditrl.algorithms import Algorithm
    from creditrl.distributed.learner_group import LearnerGroup
    from creditrl.distributed.placement import make_placement
    from creditrl.learner.local import LocalLearner
    from creditrl.models.build import load_tokenizer
    from creditrl.trainer.preference import load_pair_files

    cfg = load_config("tiny_cdpo", _overrides(tiny_files, pair_dir, None, *RAY))
    tok = load_tokenizer(cfg.model.path)
    pairs = load_pair_files(cfg, cfg.preference.train_files, tok)[:7]
    held_out = load_pair_files(cfg, cfg.preference.eval_files, tok)[:9]
    local_cfg = copy.deepcopy(cfg)
    local_cfg.resources.backend = "local"
    torch.manual_seed(cfg.seed)  # as every DeepSpeed rank does before building the policy
    local = LocalLearner(local_cfg, Algorithm(cfg.algorithm), 10, tok.pad_token_id)
    placement = make_placement(cfg.resources, 120)
    group = LearnerGroup(cfg, 10, tok.pad_token_id, placement.learner)
    try:
        for update in range(2):
            m_local, m_dist = local.preference_update(pairs), group.preference_update(pairs)
            if update == 0:
                assert m_local["train/loss"] == pytest.approx(LOG2, abs=1e-6)
            else:
                assert m_local["train/kl/rejected"] > 0
            assert m_dist.keys() == m_local.keys()
            for k in m_local:
                assert m_dist[k] == pytest.approx(m_local[k], rel=1e-5, abs=1e-7), (update, k)
            _weights_close(dict(group.named_weights()), {n: p.detach() for n, p in local.policy.named_parameters()},
                           cfg.train.lr)
        e_local, e_dist = local.evaluate_pairs(held_out), group.evaluate_pairs(held_out)
        assert e_local["eval/kl_per_token_chosen"] > 0
        for k in e_local:
            assert e_dist[k] == pytest.approx(e_local[k], rel=1e-4, abs=1e-7), k
    finally:
        group.shutdown()
        placement.remove()


def _evals(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("eval/")}


@pytest.mark.parametrize("recipe, extra", [
    ("tiny_dpo", ("model.lora.enabled=true", "model.lora.target_modules=[q_proj,v_proj]")),
    ("tiny_tdpo2", ("checkpoint.every_steps=1", "checkpoint.keep=2")),
], ids=["dpo_lora", "tdpo2_resume"])
def test_recipe_trains_on_ray_like_on_the_local_learner(local_ray, tiny_files, pair_dir, tmp_path, recipe, extra):
    """`train` on resources.backend=ray (2 ZeRO-2 ranks, 1 rollout actor) against the local learner on the same
    recipe: the same pairs (the sampler is the driver's), so the same losses, gradient norms and pair metrics
    at both steps and the same evaluations before and after. tdpo2: its DeepSpeed checkpoint of step 1 resumes
    into step 2 exactly."""
    from creditrl.trainer.loop import train

    local = train(load_config(recipe, _overrides(tiny_files, pair_dir, tmp_path / "local", *extra)))
    dist = train(load_config(recipe, _overrides(tiny_files, pair_dir, tmp_path / "ray", *extra, *RAY)))
    assert [h["step"] for h in dist.history] == [1, 2]
    assert dist.history[0]["train/loss"] == pytest.approx(LOG2, abs=1e-6)
    for h_local, h_dist in zip(local.history, dist.history):
        for k, v in h_local.items():
            if k.startswith("train/"):
                assert h_dist[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (h_local["step"], k)
    assert dist.history[1]["train/loss"] < LOG2
    assert _evals(dist.eval_before) == pytest.approx(_evals(local.eval_before), rel=1e-5)
    for k in ("eval/pref_acc", "eval/pref_reward_acc", "eval/pref_margin", "eval/kl_per_token_chosen"):
        assert dist.eval_after[k] == pytest.approx(local.eval_after[k], rel=1e-3, abs=1e-6), k
    assert dist.eval_after["eval/greedy_acc"] == local.eval_after["eval/greedy_acc"]
    ckpt = dist.run_dir / "checkpoints" / "step_000002"
    assert (ckpt / "deepspeed" / "state").is_dir() and (ckpt / "trainer_state.pt").is_file()

    if recipe == "tiny_tdpo2":
        resumed = train(load_config(recipe, _overrides(
            tiny_files, pair_dir, tmp_path / "resumed", *extra, *RAY,
            f"checkpoint.resume={dist.run_dir / 'checkpoints' / 'step_000001'}")))
        assert [h["step"] for h in resumed.history] == [2]
        for k, v in dist.history[1].items():
            if k.startswith("train/"):
                assert resumed.history[0][k] == v, k
        assert _evals(resumed.eval_after) == _evals(dist.eval_after)
