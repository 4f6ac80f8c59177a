"""End-to-end runs of the distributed path: fault tolerance at the run level, ZeRO-3 with checkpoint and
resume (`creditrl train` inside `ray job submit` is in test_job_submit.py)."""

from __future__ import annotations

import json
from pathlib import Path

from creditrl.config import load_config

# Default suite: each run is 3 short steps (about 30 s with Ray + DeepSpeed start-up on 2 cores).

SHORT = ("train.steps=3", "train.global_batch_prompts=8", "rollout.n_samples=4", "eval.max_prompts=16",
         "eval.pass_k=0", "resources.call_timeout_s=300")


def _history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "train/samples" in r]


def test_killed_rollout_actor_mid_step_trains_on_the_same_samples(local_ray, tiny_files, tmp_path):
    import ray

    from creditrl.trainer.loop import train

    def run(name: str, kill_at: int | None):
        cfg = load_config("tiny_grpo_ray", tiny_files.overrides(tmp_path / name, *SHORT))

        def on_step_start(step, group):
            if step == kill_at:
                def kill(g):  # while this step's prompts are being generated
                    ray.kill(g.actors[0], no_restart=True)
                    g.on_submitted = None
                group.on_submitted = kill

        return train(cfg, on_step_start=on_step_start)

    clean = run("clean", None)
    faulty = run("faulty", kill_at=2)
    h_clean, h_faulty = _history(clean.run_dir), _history(faulty.run_dir)
    assert [h["rollout/actor_restarts"] for h in h_faulty] == [0.0, 1.0, 0.0]
    assert sum(h["train/samples"] for h in h_faulty) == sum(h["train/samples"] for h in h_clean) == 3 * 8 * 4
    # the re-run chunk reuses its seed on re-synced weights: the interrupted run is the uninterrupted one
    for a, b in zip(h_clean, h_faulty):
        assert a["train/accuracy"] == b["train/accuracy"]
        assert a["response/length_mean"] == b["response/length_mean"]


def test_zero3_run_checkpoints_shards_and_resumes(local_ray, tiny_files, tmp_path):
    from creditrl.trainer.loop import train

    run_dir = tmp_path / "z3"
    over = tiny_files.overrides(run_dir, *SHORT, "train.steps=2", "checkpoint.every_steps=1")
    first = train(load_config("tiny_grpo_ray_zero3", over))
    ckpt = first.run_dir / "checkpoints" / "step_000002"
    shards = sorted(p.name for p in (ckpt / "deepspeed" / "state").iterdir())
    for rank in (0, 1):  # one optimizer shard per rank
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in shards
    assert (ckpt / "model" / "config.json").is_file()
    resumed = train(load_config("tiny_grpo_ray_zero3",
                                            [*over, "train.steps=3", "checkpoint.resume=auto"]))
    steps = [h["step"] for h in _history(resumed.run_dir)]
    assert steps[-1] == 3 and steps.count(3) == 1
    assert (resumed.run_dir / "checkpoints" / "step_000003" / "deepspeed" / "latest").is_file()
