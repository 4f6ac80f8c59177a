"""The preference trainer end to end on a small random model: recipes load, a run trains, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from creditrl.config import load_config
from creditrl.models.tiny import TinyModelSpec, build_tiny_model
from creditrl.preference.trainer import train_preference

SPEC = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref_train")
    model = build_tiny_model(root / "m", SPEC, seed=0)
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
        f"output_dir={root / run}", "logging.progress=false", "preference.batch_pairs=4", "train.steps=4",
        "train.lr=3e-3", "train.warmup_steps=0", "eval.max_prompts=4", "rollout.max_new_tokens=3",
        "train.micro_batch_tokens_per_worker=40", *extra])


@pytest.fixture(scope="module")
def tdpo2_run(task):
    return train_preference(_cfg(task, "tiny_tdpo2", "straight"))


def _check_trained(res):
    first, last = res.history[0], res.history[-1]
    assert first["train/loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)  # policy == reference
    assert last["train/loss"] < first["train/loss"]
    assert res.eval_after["eval/pref_margin"] > res.eval_before["eval/pref_margin"]
    assert res.eval_after["eval/kl_per_token_chosen"] > 0 and res.eval_before["eval/kl_per_token_chosen"] == 0
    assert (res.run_dir / "checkpoints" / "latest").is_file()


def test_tdpo2_recipe_trains_and_moves_towards_chosen(tdpo2_run):
    _check_trained(tdpo2_run)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tiny_dpo", "tiny_tdpo1"])
def test_recipe_trains_and_moves_towards_chosen(task, recipe):
    _check_trained(train_preference(_cfg(task, recipe, f"run_{recipe}")))


def test_resume_is_exact(task, tdpo2_run):
    straight = tdpo2_run
    train_preference(_cfg(task, "tiny_tdpo2", "resumed", "train.steps=2", "checkpoint.keep=3"))
    resumed = train_preference(_cfg(task, "tiny_tdpo2", "resumed", "checkpoint.resume=auto"))
    a = load_file(str(straight.run_dir / "checkpoints" / "step_000004" / "model" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "step_000004" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in straight.history[2:]]


def test_lora_reference_is_the_base_model(task):
    res = train_preference(_cfg(task, "tiny_dpo", "lora", "model.lora.enabled=true", "train.steps=2",
                                "model.lora.target_modules=[q_proj,v_proj]"))
    assert res.history[0]["train/loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    assert res.history[0]["train/kl_per_token/chosen"] == pytest.approx(0.0, abs=1e-7)


def test_cdpo_recipe_needs_contrastive_models(task):
    with pytest.raises(Exception, match="cdpo_positive_path"):
        load_config("tiny_cdpo", ["preference.cdpo_positive_path=null"])
