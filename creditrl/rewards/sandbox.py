"""Run untrusted (model-written) Python in a throwaway sandbox process, with hard limits.

    result = run_in_sandbox(program, tests, mode="asserts", limits=SandboxLimits(wall_s=5))

Each call starts one sandbox (`sandbox_child.py`, see its docstring for the process tree). What it guarantees:

| threat | containment |
|---|---|
| network | new network namespace with only a down loopback: every connect fails |
| host IPC: Unix sockets (files such as docker.sock, abstract names), FIFOs, /dev/shm, SysV IPC | a minimal root (pivot_root): read-only /usr and Python directories, generated /etc, 5 device nodes, fresh /proc, tmpfs /tmp and /dev/shm; no host /tmp, /run, /var, /home, /sys. seccomp: socket() only for AF_INET/AF_INET6 (socketpair stays); private net and IPC namespaces |
| files and secrets outside the working directory | not in the sandbox's root at all (private home directories, the repository, host /tmp); the program runs as a unique unprivileged uid; the working directory is a size-capped tmpfs that vanishes with the sandbox |
| secrets in the environment | the launcher gets a fixed minimal environment; nothing is inherited |
| other processes (signals, ptrace, /proc) | own pid namespace with a fresh /proc; seccomp denies ptrace, process_vm_*, pidfd_getfd, kcmp; new namespaces, mounts, io_uring, bpf, keyrings, syslog denied |
| fork bomb | RLIMIT_NPROC on a uid used by this sample only |
| memory bomb | RLIMIT_AS |
| infinite loop | RLIMIT_CPU per process, and a wall-clock limit enforced here |
| background processes | the program is in its own pid namespace; when it exits they are counted and killed |
| huge output | the pipes are read with a byte cap; over it the sandbox is killed; RLIMIT_FSIZE caps files |
| interpreter crash (ctypes) | only the sandboxed process dies; reported with its signal |
| forged test results (reward hacking) | `asserts`: the tests run in a separate judge process (own uid) that the program can not reach; the program's functions are called over a pipe and only plain values come back, compared by the judge (see sandbox_child.py). `stdio`: the outputs are compared here |

On timeout the launcher gets SIGTERM (it SIGKILLs the namespace init, which takes the namespace down) and then
the whole process group gets SIGKILL, before the launcher is reaped (so the group id can not be reused). The sandbox needs root and Linux namespaces (CI and most training nodes
run as root); without them `sandbox_unavailable_reason()` says why and the code reward refuses to start, rather
than running model code unsandboxed.

Remaining limits (docs/rewards.md has the full threat model): kernel exploits through the allowed syscalls,
timing and CPU/memory-bandwidth side channels, and whatever a test itself lets the program decide (e.g. a
test that asks the program's own object `obj.is_valid()`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
SETUP_FAILED_EXIT = 121  # must match sandbox_child.SETUP_FAILED_EXIT
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    # one thread per numeric library: thread pools sized to the host's cores would exceed max_processes
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_TAIL_BYTES = 4096  # of the program's output kept for the reason message
_GRACE_S = 2.0  # after SIGTERM, before SIGKILL of the whole group

Mode = Literal["asserts", "stdio"]


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run. Times in seconds, sizes in MiB unless named `_bytes`."""

    wall_s: float = 10.0  # whole run, enforced from outside
    cpu_s: int = 10  # CPU seconds per process (RLIMIT_CPU)
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    output_bytes: int = 1 << 20  # stdout+stderr of the run, and the size of any file written
    max_processes: int = 32  # processes/threads of the sample's uid (RLIMIT_NPROC)
    max_open_files: int = 256
    tmpfs_mb: int = 64  # size of the throwaway working directory
    test_timeout_s: float = 5.0  # per test in stdio mode

    def __post_init__(self):
        for name in ("wall_s", "cpu_s", "memory_mb", "output_bytes", "max_processes", "max_open_files",
                     "tmpfs_mb", "test_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)}")
        if self.memory_mb < 64:
            raise ValueError(f"sandbox memory_mb must be >= 64 (the interpreter needs it), got {self.memory_mb}")
        if self.max_processes < 4:
            raise ValueError(f"sandbox max_processes must be >= 4, got {self.max_processes}")


@dataclass
class SandboxResult:
    records: list[dict] = field(default_factory=list)  # harness reports: {"test": i, ...} or {"program_error"}
    exit_code: int | None = None  # of the program's process (None if killed by a signal)
    signal: int | None = None  # signal that killed the program's process
    timed_out: bool = False  # the wall limit was hit
    output_exceeded: bool = False  # stdout+stderr went over the byte cap
    stray_processes: int = 0  # processes the program left running (killed with the namespace)
    setup_error: str = ""  # the sandbox could not be built; nothing ran
    output_tail: str = ""  # last bytes of the program's stdout+stderr
    wall_s: float = 0.0


class SandboxUnavailable(RuntimeError):
    """Untrusted code can not be isolated on this machine, so it is not run."""


def _launcher_args() -> list[str]:
    return [sys.executable, "-I", "-S", "-B", str(CHILD_SCRIPT)]


def _site_packages() -> list[str]:
    return [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]


def _job(program: str, tests: list[str], mode: Mode, limits: SandboxLimits, nonce: str, status_fd: int,
         results_fd: int, site_packages: bool) -> bytes:
    lim = {"wall_s": limits.wall_s, "cpu_s": int(limits.cpu_s), "memory_mb": limits.memory_mb,
           "output_bytes": limits.output_bytes, "max_processes": limits.max_processes,
           "max_open_files": limits.max_open_files, "tmpfs_mb": limits.tmpfs_mb,
           "test_timeout_s": limits.test_timeout_s}
    return json.dumps({"program": program, "tests": tests, "mode": mode, "limits": lim, "nonce": nonce,
                       "status_fd": status_fd, "results_fd": results_fd,
                       "extra_paths": _site_packages() if site_packages else []}).encode()


def _parse_records(data: bytes, nonce: str) -> list[dict]:
    """Harness lines are `<nonce>{json}`; anything else (e.g. forged by the program without the nonce) is ignored."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith(nonce):
            try:
                rec = json.loads(line[len(nonce):])
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _exited(pid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `pid` to exit WITHOUT reaping it (its pid, our process group id, stays taken)."""
    end = time.monotonic() + timeout_s
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.002)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _finish(proc: subprocess.Popen, wait_s: float) -> bool:
    """Let the launcher exit (or stop it after `wait_s`), kill whatever is left of its group, reap it.

    Returns True if it had to be stopped. The group is killed before the launcher is reaped, so the group id
    (the launcher's pid) can not have been reused by an unrelated process.
    """
    stopped = False
    if not _exited(proc.pid, wait_s):
        stopped = True
        os.kill(proc.pid, signal.SIGTERM)  # the launcher SIGKILLs the namespace init, which ends the namespace
        _exited(proc.pid, _GRACE_S)
    _kill_group(proc.pid)
    proc.wait()
    proc.stdout.close()
    return stopped


def _read_pipes(proc: subprocess.Popen, results_r: int, deadline: float, output_cap: int,
                results_cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read output and results until both reach EOF, the deadline passes or a cap is exceeded.

    Returns (output tail, results bytes, timed_out, output_exceeded).
    """
    sel = selectors.DefaultSelector()
    out_fd = proc.stdout.fileno()
    sel.register(out_fd, selectors.EVENT_READ)
    sel.register(results_r, selectors.EVENT_READ)
    tail, results = b"", bytearray()
    out_total, open_fds = 0, 2
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                return tail, bytes(results), True, False
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    open_fds -= 1
                elif key.fd == out_fd:
                    out_total += len(chunk)
                    tail = (tail + chunk)[-_TAIL_BYTES:]
                    if out_total > output_cap:
                        return tail, bytes(results), False, True
                else:
                    results += chunk
                    if len(results) > results_cap:
                        return tail, bytes(results), False, True
        return tail, bytes(results), False, False
    finally:
        sel.close()


def run_in_sandbox(program: str, tests: list[str], mode: Mode = "asserts", limits: SandboxLimits | None = None,
                   site_packages: bool = False) -> SandboxResult:
    """Run `program` against `tests` in a fresh sandbox; never raises for anything the program does.

    `asserts`: each test is a Python statement run after the program in its namespace, reported as
    {"test": i, "ok": bool, "error"?}. `stdio`: each test is a stdin text; the program runs once per test and
    each is reported as {"test": i, "exit"|"signal"|"timeout", "stdout"}; the caller compares the outputs.
    `site_packages` makes this interpreter's installed packages importable (read-only) inside the sandbox.
    """
    limits = limits or SandboxLimits()
    nonce = secrets.token_hex(16)
    status_r, status_w = os.pipe()
    results_r, results_w = os.pipe()
    start = time.monotonic()
    result = SandboxResult()
    try:
        proc = subprocess.Popen(
            _launcher_args(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(status_w, results_w), env=dict(_ENV), cwd="/", start_new_session=True)
    except OSError:
        for fd in (status_r, status_w, results_r, results_w):
            os.close(fd)
        raise
    os.close(status_w)
    os.close(results_w)
    try:
        try:
            proc.stdin.write(_job(program, tests, mode, limits, nonce, status_w, results_w,
                                 site_packages))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        results_cap = (len(tests) + 1) * (limits.output_bytes + 4096)
        tail, results, result.timed_out, result.output_exceeded = _read_pipes(
            proc, results_r, start + limits.wall_s, limits.output_bytes, results_cap)
        stop_now = result.timed_out or result.output_exceeded
        if _finish(proc, 0.0 if stop_now else max(start + limits.wall_s - time.monotonic(), 0.1)):
            result.timed_out = result.timed_out or not result.output_exceeded
    except BaseException:  # noqa: BLE001 - e.g. the caller's own timeout: never leave a sandbox running
        _finish(proc, 0.0)
        os.close(status_r)
        os.close(results_r)
        raise
    result.records = _parse_records(results, nonce)
    result.output_tail = tail.decode("utf-8", "replace")
    result.wall_s = time.monotonic() - start
    _read_status(status_r, result, proc.returncode)
    os.close(status_r)
    os.close(results_r)
    return result


def _read_status(status_r: int, result: SandboxResult, launcher_code: int | None) -> None:
    os.set_blocking(status_r, False)
    try:
        data = os.read(status_r, 65536)
    except BlockingIOError:
        data = b""
    status = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            status.update(json.loads(line))
        except json.JSONDecodeError:
            continue
    if "setup_error" in status or launcher_code == SETUP_FAILED_EXIT:
        result.setup_error = status.get("setup_error") or f"sandbox launcher failed: {result.output_tail[-300:]}"
        log.warning("code sandbox could not be built: %s", result.setup_error)
        return
    result.exit_code = status.get("exit")
    result.signal = status.get("signal")
    result.stray_processes = int(status.get("stray_processes") or 0)


@functools.lru_cache(maxsize=1)
def sandbox_unavailable_reason() -> str | None:
    """None if sandboxing works here; otherwise why not (checked once per process by running a probe)."""
    if not sys.platform.startswith("linux"):
        return f"the code sandbox needs Linux namespaces; this is {sys.platform}"
    if os.geteuid() != 0:
        return ("the code sandbox needs root (it creates mount/network/pid namespaces and runs the program as a "
                f"unique unprivileged uid); this process runs as uid {os.geteuid()}")
    probe = run_in_sandbox("x = 1", ["assert x == 1"], "asserts", SandboxLimits(wall_s=20))
    if probe.setup_error:
        return f"the code sandbox could not be built: {probe.setup_error}"
    if probe.records != [{"test": 0, "ok": True}]:
        return f"the code sandbox probe failed: {probe}"
    return None


def require_sandbox() -> None:
    reason = sandbox_unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(f"{reason}. Refusing to run model-written code without isolation.")
