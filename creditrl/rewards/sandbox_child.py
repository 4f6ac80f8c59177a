"""The inside of the code sandbox: runs as a separate interpreter (`python -I -S -B sandbox_child.py`).

Standard library only, because it runs without site-packages. `creditrl.rewards.sandbox` starts it in a new
session with a scrubbed environment, writes one JSON job to its stdin, and reads three pipes: the program's
stdout+stderr (capped), the nonce-framed test results, and a status line written by this launcher.

Process tree (A, B are this trusted code; C runs the model's program):

    A  launcher (host namespaces, root). unshare(NEWNS|NEWNET|NEWPID|NEWIPC|NEWUTS), fork B, wait for B.
    └─ B  pid 1 of the new pid namespace. Private mounts: every mount read-only, a size-capped tmpfs on /tmp
       │  (the throwaway working directory), a fresh /proc. Forks C and reaps orphans.
       └─ C  rlimits (address space, CPU, file size, processes, open files, no core), no_new_privs, a unique
             unprivileged uid/gid with no supplementary groups, cwd /tmp, then the test harness and the program.

When C exits, B counts the processes still alive in the namespace (background processes the program left),
writes the status and exits; the kernel then kills everything left in the namespace. A forwards SIGTERM as
SIGKILL to B; A and B die with their parent (PR_SET_PDEATHSIG). The network namespace has only a loopback
interface that is down, so every connect fails. Nothing is written to the host file system.

The uid of C is 2_000_000_000 + pid(A): unique among live sandboxes, so RLIMIT_NPROC counts only this sample's
processes and one sample can not signal another.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import resource
import signal
import sys
import time
import traceback
from _json import encode_basestring_ascii as _quote  # C: a JSON string literal

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
_KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SETUP_FAILED_EXIT = 121  # A exits with this when the sandbox could not be built (nothing was run)
UID_BASE = 2_000_000_000
WORKDIR = "/tmp"

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(RuntimeError):
    """The sandbox could not be built; the program is not run."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags to keep) of every mount in this mount namespace, parents first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040
            flags = 0
            for opt in fields[5].split(","):
                flags |= _KEPT_FLAGS.get(opt, 0)
            out.append((point, flags))
    return sorted(out, key=lambda p: p[0].count("/"))


def _hidden_ancestor(path: str) -> str | None:
    """The topmost directory on `path` that other users can not traverse (e.g. /root, mode 0700), or None."""
    parts = os.path.abspath(path).split("/")[1:]
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _expose(paths: list[str]) -> None:
    """Make `paths` (the interpreter's library directories) readable for the unprivileged uid.

    A Python installed under a private home (/root/.pyenv, mode 0700) can not be read by the sandbox uid. The
    private directory is covered by an empty read-only tmpfs (which also hides the rest of that home) and only
    the needed directories are bind-mounted into it, read-only.
    """
    wanted = [(p, _hidden_ancestor(p)) for p in paths if os.path.isdir(p)]
    wanted = [(p, h) for p, h in wanted if h is not None]
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p, _ in wanted}  # before the tmpfs hides them
    for hidden in dict.fromkeys(h for _, h in wanted):
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for p, _ in wanted:
        os.makedirs(p, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fds[p]}", p, None, MS_BIND | MS_REC)
        _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fds[p])
    for hidden in dict.fromkeys(h for _, h in wanted):
        _mount(None, hidden, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _build_filesystem(tmpfs_mb: int, python_paths: list[str]) -> None:
    """Private mounts, everything read-only, a fresh tmpfs working directory and a /proc of our pid namespace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for point, kept in _mount_points():
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
        except SetupError:
            if point in ("/", "/tmp", "/dev/shm", "/var/tmp"):
                raise
            # A mount hidden under another one (or a special file system) cannot be remounted; the unique
            # unprivileged uid still cannot write to it.
    _expose(python_paths)
    # Library directories that live under the working directory's mount point (a virtualenv in /tmp, say) would
    # vanish under the tmpfs: keep a handle on them and bind them back in, read-only.
    under_workdir = [p for p in dict.fromkeys(python_paths) if os.path.isdir(p) and p.startswith(WORKDIR + "/")]
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in under_workdir}
    _mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    for p, fd in fds.items():
        os.makedirs(p, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _limit(name: str, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(getattr(resource, name), (soft, soft if hard is None else hard))


def _drop_privileges(uid: int, limits: dict) -> None:
    """Resource limits, no_new_privs and the unique unprivileged uid (capabilities are cleared by setuid)."""
    mb = 1024 * 1024
    _limit("RLIMIT_CORE", 0)
    _limit("RLIMIT_CPU", limits["cpu_s"], limits["cpu_s"] + 1)  # SIGXCPU at soft, SIGKILL at hard
    _limit("RLIMIT_AS", limits["memory_mb"] * mb)
    _limit("RLIMIT_FSIZE", limits["output_bytes"])
    _limit("RLIMIT_NOFILE", limits["max_open_files"])
    _limit("RLIMIT_NPROC", limits["max_processes"])
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SetupError("could not drop privileges")


# ------------------------------------------------------------------------------------------------------------
# The harness (process C): runs the model's program and reports each test as a nonce-framed JSON line.
# ------------------------------------------------------------------------------------------------------------
def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


def _emitter(fd: int, nonce: str):
    """A function that writes one `<nonce>{json}` line per record to the results pipe.

    `os.write` and the C string encoder are bound here, before the program runs, so a program that replaces
    `os.write` or `json.dumps` can not rewrite the reports. (Introspection of the harness itself is out of
    scope; see sandbox.py.)
    """
    write, quote = os.write, _quote

    def emit(record: dict) -> None:
        fields = []
        for key, value in record.items():
            text = ("true" if value else "false") if value is True or value is False else (
                "%d" % value if type(value) is int else quote(value))
            fields.append(quote(key) + ": " + text)
        write(fd, (nonce + "{" + ", ".join(fields) + "}\n").encode())

    return emit


def _run_asserts(program: str, tests: list[str], emit) -> None:
    """Run the program, then each test statement (e.g. `assert f(2) == 4`) in the program's namespace."""
    scope = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(program, "<solution>", "exec"), scope)
    except BaseException as e:  # noqa: BLE001 - SystemExit included: a program that exits fails every test
        emit({"program_error": _error_text(e)})
        return
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"<test {i}>", "exec"), scope)
            emit({"test": i, "ok": True})
        except BaseException as e:  # noqa: BLE001
            emit({"test": i, "ok": False, "error": _error_text(e)})


def _stdin_path(i: int) -> str:
    return f"{WORKDIR}/.stdin_{i}"


def _run_one_stdio(program: str, timeout_s: float, output_bytes: int, i: int) -> dict:
    """Run the program in a forked child with test `i`'s input as stdin; return its exit and (capped) stdout."""
    in_path, out_path = _stdin_path(i), f"{WORKDIR}/.stdout_{i}"
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.dup2(os.open(in_path, os.O_RDONLY), 0)
            os.dup2(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            exec(compile(program, "<solution>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001
            traceback.print_exc(limit=3)
            code = 1
        try:
            sys.stdout.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"test": i, "timeout": True}
        else:
            time.sleep(0.002)
    with open(out_path, "rb") as f:
        out = f.read(output_bytes).decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        return {"test": i, "signal": os.WTERMSIG(status), "stdout": out}
    return {"test": i, "exit": os.WEXITSTATUS(status), "stdout": out}


def _harness(job: dict, results_fd: int) -> None:
    emit = _emitter(results_fd, job["nonce"])
    stdin = os.open("/dev/null", os.O_RDONLY)
    os.dup2(stdin, 0)
    if job["mode"] == "asserts":
        _run_asserts(job["program"], job["tests"], emit)
    else:
        limits = job["limits"]
        for i in range(len(job["tests"])):
            emit(_run_one_stdio(job["program"], limits["test_timeout_s"], limits["output_bytes"], i))


# ------------------------------------------------------------------------------------------------------------
# B: init of the pid namespace
# ------------------------------------------------------------------------------------------------------------
def _other_processes() -> int:
    """Processes in this pid namespace other than ourselves (pid 1)."""
    return sum(1 for d in os.listdir("/proc") if d.isdigit() and d != "1")


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _namespace_init(job: dict, uid: int, status_fd: int, results_fd: int) -> int:
    _die_with_parent()
    sys.path.extend(p for p in job["extra_paths"] if p not in sys.path)
    _build_filesystem(job["limits"]["tmpfs_mb"], [p for p in sys.path if p])
    os.chdir(WORKDIR)
    if job["mode"] == "stdio":  # written by root before the drop: the program can read but not change them
        for i, text in enumerate(job["tests"]):
            with open(_stdin_path(i), "w") as f:
                f.write(text)
    child = os.fork()
    if child == 0:
        code = 0
        try:
            os.close(status_fd)
            _drop_privileges(uid, job["limits"])
            _harness(job, results_fd)
        except BaseException:  # noqa: BLE001 - report and exit; never return into B's code
            traceback.print_exc(limit=3)
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(results_fd)
    while True:
        pid, st = os.wait()
        if pid == child:
            break
    _reap_zombies()
    status = {"exit": os.WEXITSTATUS(st) if os.WIFEXITED(st) else None,
              "signal": os.WTERMSIG(st) if os.WIFSIGNALED(st) else None,
              "stray_processes": _other_processes()}
    os.write(status_fd, (json.dumps(status) + "\n").encode())
    return 0


# ------------------------------------------------------------------------------------------------------------
# A: the launcher
# ------------------------------------------------------------------------------------------------------------
def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> int:
    job = json.loads(sys.stdin.buffer.read())
    status_fd, results_fd = job["status_fd"], job["results_fd"]
    try:
        _die_with_parent()
        if os.getppid() == 1:  # our parent already died
            return SETUP_FAILED_EXIT
        if os.geteuid() != 0:
            raise SetupError("the sandbox needs root to create namespaces and switch to an unprivileged uid")
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    except SetupError as e:
        os.write(status_fd, (json.dumps({"setup_error": str(e)}) + "\n").encode())
        return SETUP_FAILED_EXIT
    uid = UID_BASE + os.getpid()
    init = os.fork()
    if init == 0:
        code = 0
        try:
            code = _namespace_init(job, uid, status_fd, results_fd)
        except SetupError as e:
            os.write(status_fd, (json.dumps({"setup_error": str(e)}) + "\n").encode())
            code = SETUP_FAILED_EXIT
        except BaseException:  # noqa: BLE001
            traceback.print_exc(limit=3)
            code = SETUP_FAILED_EXIT
        finally:
            os._exit(code)
    os.close(results_fd)
    os.close(status_fd)
    signal.signal(signal.SIGTERM, lambda *_: _kill_quietly(init))
    _, st = os.waitpid(init, 0)
    return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)


if __name__ == "__main__":
    sys.exit(main())
