"""Preference training through the one step loop (`creditrl.trainer.loop.train`) on the local learner, on a
small random model: every preference recipe trains and matches an explicit float64 reference, resume is exact,
the LoRA reference is the base model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from creditrl.config import load_config
from creditrl.data import PromptSampler
from creditrl.models.build import load_tokenizer
from creditrl.models.tiny import TinyModelSpec, build_tiny_model
from creditrl.trainer.loop import train
from creditrl.trainer.preference import load_pair_files
from tests.preference import explicit

SPEC = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
LOG2 = math.log(2.0)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref_train")
    model = build_tiny_model(root / "m", SPEC, seed=0)
    build_tiny_model(root / "pos", SPEC, seed=1)  # cDPO's positive and negative models (random, so the
    build_tiny_model(root / "neg", SPEC, seed=2)  # critical-token weights are far from uniform)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in [(47, 5), (95, 7), (18, 3), (29, 9), (66, 6),
                                                                      (38, 4), (77, 8), (59, 2)]]
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": str(int(r["answer"]) - 10),
              "answer": r["answer"]} for r in rows]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root, model


def _cfg(task, recipe: str, run: str, *extra: str):
    root, model = task
    return load_config(recipe, [
        f"model.path={model}", f"data.train_files=[{root / 'task.jsonl'}]", f"data.eval_files=[{root / 'task.jsonl'}]",
        f"preference.train_files=[{root / 'pairs.jsonl'}]", f"preference.eval_files=[{root / 'pairs.jsonl'}]",
        f"preference.cdpo_positive_path={root / 'pos'}", f"preference.cdpo_negative_path={root / 'neg'}",
        f"output_dir={root / run}", "logging.progress=false", "preference.batch_pairs=4", "train.steps=4",
        "train.lr=3e-3", "train.warmup_steps=0", "eval.max_prompts=4", "rollout.max_new_tokens=3",
        "train.micro_batch_tokens_per_worker=40", *extra])


@pytest.fixture(scope="module")
def tdpo2_run(task):
    return train(_cfg(task, "tiny_tdpo2", "straight"))


def _check_trained(res):
    first, last = res.history[0], res.history[-1]
    assert first["train/loss"] == pytest.approx(LOG2, abs=1e-5)  # policy == reference
    assert last["train/loss"] < first["train/loss"]
    assert res.eval_after["eval/pref_margin"] > res.eval_before["eval/pref_margin"]
    assert res.eval_after["eval/kl_per_token_chosen"] > 0 and res.eval_before["eval/kl_per_token_chosen"] == 0
    assert (res.run_dir / "checkpoints" / "latest").is_file()


def test_tdpo2_recipe_trains_and_moves_towards_chosen(tdpo2_run):
    _check_trained(tdpo2_run)


def _step_pairs(cfg, steps: int):
    """The pairs of each step, drawn as the run's sampler draws them."""
    pairs = load_pair_files(cfg, cfg.preference.train_files, load_tokenizer(cfg.model.path))
    sampler = PromptSampler(len(pairs), cfg.seed, cfg.data.shuffle)
    return [[pairs[i] for i in sampler.next_indices(cfg.preference.batch_pairs)] for _ in range(steps)], pairs


@pytest.mark.parametrize("recipe", ["tiny_dpo", "tiny_tdpo1", "tiny_tdpo2", "tiny_cdpo"])
def test_recipe_trains_two_steps_like_the_explicit_reference(task, recipe, capsys):
    """Each preference recipe, 2 steps on the local learner. Against float64 full-logit formulas: step 1's loss
    (log 2: policy == reference) and gradient norm, step 2's loss at the weights checkpointed after step 1 (the
    KL and cDPO weights matter there), and the held-out pair metrics of the final weights."""
    cfg = _cfg(task, recipe, f"two_{recipe}", "train.steps=2", "checkpoint.every_steps=1", "checkpoint.keep=2")
    res = train(cfg)
    pc = cfg.preference
    (pairs1, pairs2), all_pairs = _step_pairs(cfg, 2)
    ref = explicit.float64_model(cfg.model.path)
    contrastive = None
    if pc.loss == "cdpo":
        contrastive = (explicit.float64_model(pc.cdpo_positive_path), explicit.float64_model(pc.cdpo_negative_path))
    ckpts = res.run_dir / "checkpoints"

    loss1, norm1 = explicit.loss_and_grad_norm(explicit.float64_model(cfg.model.path), ref, pairs1, pc.loss, pc.beta,
                                               pc.alpha, contrastive)
    assert loss1 == pytest.approx(LOG2, abs=1e-12)
    assert res.history[0]["train/loss"] == pytest.approx(loss1, abs=1e-6)
    assert res.history[0]["train/grad_norm"] == pytest.approx(norm1, rel=1e-5)

    after1 = explicit.float64_model(ckpts / "step_000001" / "model")
    loss2, norm2 = explicit.loss_and_grad_norm(after1, ref, pairs2, pc.loss, pc.beta, pc.alpha, contrastive)
    assert abs(loss2 - LOG2) > 1e-3  # the first step moved the policy
    assert res.history[1]["train/loss"] == pytest.approx(loss2, abs=1e-6)
    assert res.history[1]["train/grad_norm"] == pytest.approx(norm2, rel=1e-5)

    final = explicit.held_out_metrics(explicit.float64_model(ckpts / "step_000002" / "model"), ref, all_pairs)
    for k, v in final.items():
        assert res.eval_after[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert res.eval_before["eval/kl_per_token_chosen"] == 0.0
    out = capsys.readouterr().out
    assert "reference: held-out pref acc" in out and "trained  : held-out pref acc" in out


def test_resume_is_exact(task, tdpo2_run):
    straight = tdpo2_run
    train(_cfg(task, "tiny_tdpo2", "resumed", "train.steps=2", "checkpoint.keep=3"))
    resumed = train(_cfg(task, "tiny_tdpo2", "resumed", "checkpoint.resume=auto"))
    a = load_file(str(straight.run_dir / "checkpoints" / "step_000004" / "model" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "step_000004" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in straight.history[2:]]


def test_lora_reference_is_the_base_model(task):
    res = train(_cfg(task, "tiny_dpo", "lora", "model.lora.enabled=true", "train.steps=2",
                     "model.lora.target_modules=[q_proj,v_proj]"))
    assert res.history[0]["train/loss"] == pytest.approx(LOG2, abs=1e-6)
    assert res.history[0]["train/kl_per_token/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert res.history[1]["train/kl_per_token/chosen"] > 0  # the adapter moved the policy off its base


def test_cdpo_recipe_needs_contrastive_models(task):
    with pytest.raises(Exception, match="cdpo_positive_path"):
        load_config("tiny_cdpo", ["preference.cdpo_positive_path=null"])
