"""`creditrl train` inside `ray job submit` against a `ray start --head` cluster on loopback, stopped with
`ray stop` afterwards. Its own module, so no other test's local Ray instance is alive while it runs (on a
machine where other Ray clusters are running, only this test's cluster is stopped, by pid)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.distributed.test_e2e import SHORT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, str]:
    """pid -> command line of every process on this machine (from /proc)."""
    out = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            out[int(pid_dir.name)] = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def _ray_processes() -> dict[int, str]:
    """pid -> command line of every Ray cluster process (GCS server or raylet) on this machine."""
    return {pid: cmd for pid, cmd in _processes().items() if "gcs_server" in cmd or "raylet" in cmd}


def _stop_cluster(temp_dir: str, port: int, others_running: bool) -> None:
    """`ray stop`, as a user would. It stops every Ray process on the machine, so when other Ray clusters were
    already running before the test (a shared developer machine), only our cluster's processes (recognised
    by their unique --temp-dir or GCS port) are killed, by pid."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    if not others_running:
        subprocess.run([ray_bin, "stop", "--force"], check=False, capture_output=True, timeout=120)
        return
    for pid, cmdline in _processes().items():
        if (temp_dir in cmdline or f":{port} " in cmdline + " ") and pid != os.getpid():
            try:
                os.kill(pid, 9)
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
    others_running = bool(_ray_processes())
    # Every port explicit: Ray's fixed defaults (e.g. the dashboard agent's 52365) collide with any other Ray
    # instance on the machine, such as another test module's local one, and the job then never starts.
    ports = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "runtime-env-agent-port", "metrics-export-port",
                                                      "ray-client-server-port", "node-manager-port",
                                                      "object-manager-port")]
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), *ports,
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
        _stop_cluster(temp_dir, port, others_running)
        shutil.rmtree(temp_dir, ignore_errors=True)
    if not others_running:
        assert not _ray_processes(), "ray stop left Ray processes running"
