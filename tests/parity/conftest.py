"""Fixtures of the parity matrix: the distributed tests' tiny random model + data and one local Ray instance per
module (re-used from tests/distributed/conftest.py), the RL recipe list, and a sharpened copy of the tiny model
for the learner-level comparisons.

Environment: the distributed conftest sets RAY_AUTH_MODE=disabled, DS_ACCELERATOR=cpu and OMP_NUM_THREADS=1 when
it is imported (below), before Ray or DeepSpeed start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.conftest import TinyFiles, local_ray, tiny_files  # noqa: F401  (fixtures re-used)

# The RL recipes: every creditrl/recipes/tiny_*.yaml except the preference ones and the Ray variants of
# tiny_grpo (resources only). `test_recipe_list_is_complete` keeps this in step with the recipe directory.
RL_RECIPES = (
    "tiny_cispo", "tiny_clip_cov", "tiny_composed", "tiny_dapo", "tiny_dcpo", "tiny_dr_grpo", "tiny_grpo",
    "tiny_gspo", "tiny_hapo", "tiny_high_entropy", "tiny_icepop", "tiny_kl_cov", "tiny_lp_reg", "tiny_math_format",
    "tiny_minpro", "tiny_nthr", "tiny_reinforce_pp", "tiny_reinforce_pp_baseline", "tiny_rloo", "tiny_steer",
    "tiny_thr", "tiny_thr_explore", "tiny_tis",
    # issue 14: verl / TRL losses and options
    "tiny_gpg", "tiny_gmpo", "tiny_sapo", "tiny_token_sum", "tiny_grpo_batch_std", "tiny_normalize_then_sum",
    "tiny_kl_bias_corrected",
)
PREFERENCE_RECIPES = ("tiny_cdpo", "tiny_dpo", "tiny_tdpo1", "tiny_tdpo2")
RAY_VARIANTS = ("tiny_grpo_ray", "tiny_grpo_ray_zero3")
# recipes with a learned critic (PPO/GAE): local backend only until the DeepSpeed critic group exists (a `critic:`
# section with resources.backend: ray is a config-time error), so they stay out of the local-vs-Ray matrix;
# tests/trainer/test_ppo_critic.py covers them
CRITIC_RECIPES = ("tiny_ppo",)

# Backend overrides of the matrix (the recipe files say nothing about the backend but tiny_grpo_ray*). vLLM on CPU:
# eager mode (engine start ~20 s instead of ~35 s) and a 256 MiB KV cache; one vLLM rollout actor on Ray (each
# engine is two more processes on the 2 cores).
VLLM_CPU = ("rollout.engine=vllm", "rollout.vllm.enforce_eager=true", f"rollout.vllm.kv_cache_memory_bytes={256 << 20}")
_RAY = ("resources.backend=ray", "resources.learner_ranks=2", "resources.zero_stage=2", "resources.placement=colocated",
        "resources.cpus_per_actor=0.5", "resources.call_timeout_s=300")
BACKENDS: dict[str, tuple[str, ...]] = {
    "local_hf": ("resources.backend=local", "rollout.engine=hf"),
    "local_vllm": ("resources.backend=local", *VLLM_CPU),
    "ray_hf": (*_RAY, "rollout.engine=hf", "resources.rollout_actors=2"),
    "ray_vllm": (*_RAY, *VLLM_CPU, "resources.rollout_actors=1"),
}


def sliced(recipes, default: set[str]) -> list:
    """pytest params of `recipes`: those in `default` run in the default suite, the others are marked slow."""
    return [pytest.param(r, id=r) if r in default else pytest.param(r, id=r, marks=pytest.mark.slow)
            for r in recipes]


def vllm_unavailable_reason() -> str | None:
    """Why `rollout.engine=vllm` cannot run here (None if it can): vLLM not importable, or the config refuses it."""
    from creditrl.config import load_config

    try:
        load_config("tiny_grpo", list(VLLM_CPU))
    except Exception as exc:  # noqa: BLE001 - any refusal is a reason to skip, reported verbatim
        return f"rollout.engine=vllm is not accepted here: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def sharp_model(tiny_files, tmp_path_factory) -> Path:
    """The tiny random model with its final RMSNorm weight x8: logits x8, so token entropies spread over
    ~0-3.3 nats (mean ~1.8) instead of sitting at ln(V) = 4.34 +- 0.004. On the near-uniform random model the
    entropy-based statistics (STEER, HAPO, 80/20, Lp-Reg) are differences of nearly equal numbers and amplify
    fp32 noise: HAPO's loss differed by 3.8e-5 (relative) between the learners there, 5.5e-7 sharpened. So every
    recipe is well conditioned and the parity tolerances can stay tight."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("parity_sharp") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_files.model)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_files.model).save_pretrained(out)
    return out


def skip_without_vllm(backend: str) -> None:
    if "vllm" in backend:
        reason = vllm_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)


def run_recipe(tiny_task, run_dir: Path, recipe: str, backend: str, *extra: str, on_step_start=None):
    """`creditrl.trainer.loop.train` of `recipe` on `backend` with the tiny task's SFT model (mixed rewards, so the
    updates are real): the TrainResult."""
    from creditrl.config import load_config
    from creditrl.trainer.loop import train

    cfg = load_config(recipe, tiny_task.overrides(run_dir, *BACKENDS[backend], *extra))
    return train(cfg, on_step_start=on_step_start)


def read_steps(run_dir: Path) -> list[dict]:
    """The per-step records of a run's metrics.jsonl (the rows with a `train/samples` entry)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "train/samples" in r]
