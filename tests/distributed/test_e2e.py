"""End-to-end runs of the distributed path (slow): fault tolerance at the run level, ZeRO-3 with checkpoint
and resume, and `creditrl train` inside `ray job submit` against a `ray start --head` cluster on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creditrl.config import load_config

pytestmark = pytest.mark.slow

SHORT = ("train.steps=3", "train.global_batch_prompts=8", "rollout.n_samples=4", "eval.max_prompts=16",
         "eval.pass_k=0", "resources.call_timeout_s=300")


def _history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "train/samples" in r]


def test_killed_rollout_actor_mid_step_trains_on_the_same_samples(local_ray, tiny_files, tmp_path):
    import ray

    from creditrl.distributed import train_distributed

    def run(name: str, kill_at: int | None):
        cfg = load_config("tiny_grpo_ray", tiny_files.overrides(tmp_path / name, *SHORT))

        def on_step_start(step, group):
            if step == kill_at:
                def kill(g):  # while this step's prompts are being generated
                    ray.kill(g.actors[0], no_restart=True)
                    g.on_submitted = None
                group.on_submitted = kill

        return train_distributed(cfg, on_step_start=on_step_start)

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
    from creditrl.distributed import train_distributed

    run_dir = tmp_path / "z3"
    over = tiny_files.overrides(run_dir, *SHORT, "train.steps=2", "checkpoint.every_steps=1")
    first = train_distributed(load_config("tiny_grpo_ray_zero3", over))
    ckpt = first.run_dir / "checkpoints" / "step_000002"
    shards = sorted(p.name for p in (ckpt / "deepspeed" / "state").iterdir())
    for rank in (0, 1):  # one optimizer shard per rank
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in shards
    assert (ckpt / "model" / "config.json").is_file()
    resumed = train_distributed(load_config("tiny_grpo_ray_zero3",
                                            [*over, "train.steps=3", "checkpoint.resume=auto"]))
    steps = [h["step"] for h in _history(resumed.run_dir)]
    assert steps[-1] == 3 and steps.count(3) == 1
    assert (resumed.run_dir / "checkpoints" / "step_000003" / "deepspeed" / "latest").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: str, port: int) -> None:
    """`ray stop` stops every Ray process on the machine; on a shared machine only our cluster's processes
    (recognised by their unique --temp-dir or GCS port) are stopped, by pid. CREDITRL_TEST_RAY_STOP=1 uses
    `ray stop` (CI, dedicated machines)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    if os.environ.get("CREDITRL_TEST_RAY_STOP") == "1":
        subprocess.run([ray_bin, "stop", "--force"], check=False, capture_output=True)
        return
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ours = temp_dir in cmdline or f":{port} " in cmdline + " "
        if ours and int(pid_dir.name) != os.getpid():
            try:
                os.kill(int(pid_dir.name), 9)
            except ProcessLookupError:
                pass


def test_creditrl_train_inside_ray_job_submit(tiny_files, tmp_path):
    """`ray start --head` on loopback, `ray job submit -- creditrl train ...`, job SUCCEEDED, checkpoint written."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    port, dash = _free_port(), _free_port()
    temp_dir = f"/tmp/crl{os.getpid()}"
    run_dir = tmp_path / "job"
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                    "--include-dashboard", "true", "--disable-usage-stats", "--temp-dir", temp_dir],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        overrides = tiny_files.overrides(run_dir, *SHORT, "train.steps=2")
        submit = [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--no-wait", "--",
                  str(Path(sys.executable).parent / "creditrl"), "train", "tiny_grpo_ray", *overrides]
        job_id = None
        for _ in range(12):  # the job server may still be starting on a loaded machine
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=120)
            found = re.search(r"raysubmit_\w+", job.stdout + job.stderr)
            if job.returncode == 0 and found:
                job_id = found.group(0)
                break
            time.sleep(10)
        assert job_id, f"ray job submit failed:\n{job.stdout}\n{job.stderr}"
        deadline = time.time() + 900
        status = ""
        while time.time() < deadline:
            res = subprocess.run([ray_bin, "job", "status", "--address", f"http://127.0.0.1:{dash}", job_id],
                                 env=env, capture_output=True, text=True, timeout=60)
            status = (res.stdout + res.stderr).upper()  # "Job '...' succeeded" / "...: RUNNING"
            if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
                break
            time.sleep(5)
        res = subprocess.run([ray_bin, "job", "logs", "--address", f"http://127.0.0.1:{dash}", job_id],
                             env=env, capture_output=True, text=True, timeout=60)
        logs = res.stdout + res.stderr
        assert "SUCCEEDED" in status, f"{status}\n{logs[-3000:]}"
        assert (run_dir / "checkpoints" / "latest").is_file()
        assert (run_dir / "checkpoints" / "step_000002" / "deepspeed" / "latest").is_file()
    finally:
        _stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)
