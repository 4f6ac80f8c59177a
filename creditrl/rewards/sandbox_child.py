"""The inside of the code sandbox: runs as a separate interpreter (`python -I -S -B sandbox_child.py`).

Standard library only, because it runs without site-packages. `creditrl.rewards.sandbox` starts it in a new
session with a scrubbed environment, writes one JSON job to its stdin, and reads three pipes: the output of the
sandbox (stdout+stderr, capped), the nonce-framed test results, and a status line written by this launcher.

Process tree (A, B and J are this trusted code; P runs the model's program):

    A  launcher (host namespaces, root). unshare(NEWNS|NEWNET|NEWPID|NEWIPC|NEWUTS), fork B, wait for B.
    └─ B  pid 1 of the new pid namespace, root. Builds a minimal root file system and pivots into it (see
       │  `_build_root`): read-only system and Python directories, a generated /etc, five device nodes, a fresh
       │  /proc, size-capped tmpfs /tmp and /dev/shm. No host /tmp, /run, /var, /home, /root, /sys, /dev/shm:
       │  no host socket, FIFO, shared memory file or secret is reachable.
       ├─ P  the program: rlimits, no_new_privs, unique unprivileged uid, seccomp filter, then exec a FRESH
       │     interpreter (`sandbox_child.py --asserts|--stdio`) that holds nothing but the program. It has no
       │     results pipe, and it never sees the tests.
       └─ J  (asserts mode) the judge: its own unprivileged uid (P can neither signal, trace nor read it), the
             same limits and filter. It runs the tests in its own interpreter; every name a test takes from the
             program is a remote reference: calling it asks P over a pipe and gets back a plain value (exact
             int/float/str/bool/None/bytes/complex and lists, tuples, dicts, sets of those, decoded strictly
             here) or another remote reference. Comparisons, `bool`, `isinstance`, `math.isclose`... all run in
             J on plain values, so the program's `__eq__`, patched builtins or modules, frames and exit codes
             can not change a verdict. Only J writes the results.

In stdio mode B itself runs P once per test (stdin: that test's input, stdout: a file only B can open) and
reports exit status and output; the outputs are compared by the caller, outside the sandbox.

When P exits, B counts the program's processes still alive (background processes), kills them, writes the
status and exits; the kernel then kills everything left in the namespace. A forwards SIGTERM as SIGKILL to B;
A and B die with their parent (PR_SET_PDEATHSIG). The network namespace has only a loopback interface that is
down; the IPC namespace is private (SysV IPC, POSIX message queues).

Seccomp (P and J): socket() only for AF_INET/AF_INET6 (both unreachable; socketpair() stays for AF_UNIX), and
EPERM for ptrace, process_vm_*, kcmp, pidfd_getfd, io_uring, bpf, perf_event_open, userfaultfd, keyrings,
namespaces (unshare, setns, clone with CLONE_NEW*), mount family, syslog and module/kexec/reboot calls.

The uid of P is 2_000_000_000 + pid(A), unique among live sandboxes, so RLIMIT_NPROC counts only this sample's
processes and one sample can not signal another; J's uid is that plus 2**22 (above any pid).
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys
import time
import traceback
from _json import encode_basestring_ascii as _quote  # C: a JSON string literal

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
_NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
SETUP_FAILED_EXIT = 121  # A exits with this when the sandbox could not be built (nothing was run)
UID_BASE = 2_000_000_000
JUDGE_UID_OFFSET = 1 << 22  # pids are below 2**22
WORKDIR = "/tmp"
SANDBOX_DIR = "/.sandbox"  # inside the new root: this script, the program, stdio inputs (root only)
_DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(RuntimeError):
    """The sandbox could not be built; the program is not run."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)),
           f"mount {target}")


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


# ------------------------------------------------------------------------------------------------------------
# seccomp
# ------------------------------------------------------------------------------------------------------------
_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
           "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
           "keyctl", "add_key", "request_key", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
           "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "syslog",
           "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
           "swapoff", "acct", "quotactl", "vhangup", "lookup_dcookie", "open_by_handle_at", "fanotify_init",
           "uselib", "iopl", "ioperm")
# (audit arch, syscall numbers) from <asm/unistd_64.h> and <asm-generic/unistd.h>
_SYSCALLS = {
    "x86_64": (0xC000003E, dict(
        ptrace=101, process_vm_readv=310, process_vm_writev=311, kcmp=312, pidfd_getfd=438, process_madvise=440,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, bpf=321, perf_event_open=298,
        userfaultfd=323, keyctl=250, add_key=248, request_key=249, unshare=272, setns=308, mount=165,
        umount2=166, pivot_root=155, chroot=161, open_tree=428, move_mount=429, fsopen=430, fsconfig=431,
        fsmount=432, fspick=433, mount_setattr=442, syslog=103, kexec_load=246, kexec_file_load=320,
        init_module=175, finit_module=313, delete_module=176, reboot=169, swapon=167, swapoff=168, acct=163,
        quotactl=179, vhangup=153, lookup_dcookie=212, open_by_handle_at=304, fanotify_init=300, uselib=134,
        iopl=172, ioperm=173, clone=56, clone3=435, socket=41, socketpair=53)),
    "aarch64": (0xC00000B7, dict(
        ptrace=117, process_vm_readv=270, process_vm_writev=271, kcmp=272, pidfd_getfd=438, process_madvise=440,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, bpf=280, perf_event_open=241,
        userfaultfd=282, keyctl=219, add_key=217, request_key=218, unshare=97, setns=268, mount=40, umount2=39,
        pivot_root=41, chroot=51, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
        fspick=433, mount_setattr=442, syslog=116, kexec_load=104, kexec_file_load=294, init_module=105,
        finit_module=273, delete_module=106, reboot=142, swapon=224, swapoff=225, acct=89, quotactl=60,
        vhangup=58, lookup_dcookie=18, open_by_handle_at=265, fanotify_init=262, clone=220, clone3=435,
        socket=198, socketpair=199)),
}
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS = 1, 38
_AF_UNIX, _AF_INET, _AF_INET6 = 1, 2, 10


def _seccomp_filter() -> bytes:
    """The BPF program (see the module docstring). Unknown architectures are refused (fail closed)."""
    arch = platform.machine()
    if arch not in _SYSCALLS:
        raise SetupError(f"no seccomp syscall table for {arch}; the sandbox supports x86_64 and aarch64")
    audit_arch, nr = _SYSCALLS[arch]
    prog = [(_LD_W_ABS, 0, 0, 4), (_JEQ, 1, 0, audit_arch), (_RET, 0, 0, _KILL), (_LD_W_ABS, 0, 0, 0)]
    if arch == "x86_64":  # x32 syscalls (bit 30) bypass a filter on the x86_64 numbers: refuse them
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _ERRNO | _EPERM)]
    for name in _DENIED:
        if name in nr:
            prog += [(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, _ERRNO | _EPERM)]
    prog += [(_JEQ, 0, 1, nr["clone3"]), (_RET, 0, 0, _ERRNO | _ENOSYS)]  # flags unreadable: libc uses clone
    prog += [(_JEQ, 0, 4, nr["clone"]), (_LD_W_ABS, 0, 0, 16), (_JSET, 0, 1, _NS_FLAGS),
             (_RET, 0, 0, _ERRNO | _EPERM), (_RET, 0, 0, _ALLOW)]
    prog += [(_JEQ, 0, 5, nr["socket"]), (_LD_W_ABS, 0, 0, 16), (_JEQ, 2, 0, _AF_INET), (_JEQ, 1, 0, _AF_INET6),
             (_RET, 0, 0, _ERRNO | _EPERM), (_RET, 0, 0, _ALLOW)]
    prog += [(_JEQ, 0, 4, nr["socketpair"]), (_LD_W_ABS, 0, 0, 16), (_JEQ, 1, 0, _AF_UNIX),
             (_RET, 0, 0, _ERRNO | _EPERM), (_RET, 0, 0, _ALLOW)]
    prog += [(_RET, 0, 0, _ALLOW)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")


# ------------------------------------------------------------------------------------------------------------
# B: the minimal root file system
# ------------------------------------------------------------------------------------------------------------
def _under(path: str, parents: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def _etc_files(uids: dict[str, int]) -> dict[str, tuple[str, bytes | str]]:
    """/etc of the sandbox: what the dynamic linker and the time zone need, and generated name files."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for name in ("ld.so.cache", "ld.so.conf", "localtime", "ld.so.conf.d", "alternatives"):
        src = f"/etc/{name}"
        if os.path.islink(src):
            out[name] = ("link", os.readlink(src))
        elif os.path.isfile(src):
            with open(src, "rb") as f:
                out[name] = ("file", f.read())
        elif os.path.isdir(src):
            out[name] = ("dir", b"")
            for entry in os.scandir(src):
                if entry.is_symlink():
                    out[f"{name}/{entry.name}"] = ("link", os.readlink(entry.path))
                elif entry.is_file():
                    with open(entry.path, "rb") as f:
                        out[f"{name}/{entry.name}"] = ("file", f.read())
    users = "".join(f"{n}:x:{u}:{u}:{n}:/tmp:/usr/sbin/nologin\n" for n, u in uids.items())
    out["passwd"] = ("file", ("root:x:0:0:root:/root:/usr/sbin/nologin\n" + users).encode())
    out["group"] = ("file", ("root:x:0:\n" + "".join(f"{n}:x:{u}:\n" for n, u in uids.items())).encode())
    out["hosts"] = ("file", b"127.0.0.1 localhost\n::1 localhost\n")
    out["nsswitch.conf"] = ("file", b"passwd: files\ngroup: files\nhosts: files\n")
    return out


def _bind_ro(fd: int, target: str, flags: int = MS_NOSUID | MS_NODEV) -> None:
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def _build_root(job: dict, python_dirs: list[str], uids: dict[str, int]) -> None:
    """A new root with only what the program needs, then pivot_root into it (the host's mounts are detached).

    Read-only binds: /usr (and the /bin, /lib... links or directories), the Python installation and
    `python_dirs`. Generated: /etc, /dev (null, zero, full, random, urandom), SANDBOX_DIR with this script and
    the program. Fresh: /proc (this pid namespace), tmpfs /tmp (the working directory) and /dev/shm.
    """
    limits = job["limits"]
    os.umask(0o022)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    system = [p for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32") if os.path.lexists(p)]
    links = {p: os.readlink(p) for p in system if os.path.islink(p)}
    dirs: list[str] = []
    for p in sorted(dict.fromkeys(os.path.abspath(p) for p in
                                  [p for p in system if p not in links] + python_dirs if os.path.isdir(p)),
                    key=lambda p: (p.count("/"), p)):
        if p != "/" and not _under(p, dirs):
            dirs.append(p)
    # handles on everything before anything is hidden (a virtualenv in /tmp, say, vanishes under the new /tmp)
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in dirs}
    dev_fds = {d: os.open(f"/dev/{d}", os.O_PATH) for d in _DEVICES if os.path.exists(f"/dev/{d}")}
    etc = _etc_files(uids)
    with open(os.path.abspath(__file__), "rb") as f:
        script = f.read()

    new = "/tmp"  # mount point of the new root, in this mount namespace only
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    for d in ("proc", "tmp", "dev", "etc", SANDBOX_DIR[1:]):
        os.makedirs(f"{new}/{d}", mode=0o755, exist_ok=True)
    _mount("tmpfs", f"{new}{WORKDIR}", "tmpfs", MS_NOSUID | MS_NODEV, f"size={limits['tmpfs_mb']}m,mode=1777")
    for p, target in links.items():
        os.symlink(target, new + p)
    for p in dirs:
        os.makedirs(new + p, mode=0o755, exist_ok=True)
        _bind_ro(fds.pop(p), new + p, MS_NOSUID | MS_NODEV)
    for name, (kind, data) in etc.items():
        path = f"{new}/etc/{name}"
        if kind == "link":
            os.symlink(data, path)
        elif kind == "dir":
            os.makedirs(path, mode=0o755, exist_ok=True)
        else:
            with open(path, "wb") as f:
                f.write(data)
    for d, fd in dev_fds.items():
        open(f"{new}/dev/{d}", "w").close()
        _mount(f"/proc/self/fd/{fd}", f"{new}/dev/{d}", None, MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{new}/dev/{name}")
    os.makedirs(f"{new}/dev/shm", mode=0o755)
    sd = new + SANDBOX_DIR
    with open(f"{sd}/child.py", "wb") as f:
        f.write(script)
    with open(f"{sd}/program.py", "w") as f:
        f.write(job["program"])
    os.chmod(f"{sd}/program.py", 0o444)
    os.makedirs(f"{sd}/private", mode=0o700)  # root only (a tmpfs after the pivot): stdio inputs and output

    os.chdir(new)
    _check(_libc.syscall(_SYSCALLS[platform.machine()][1]["pivot_root"], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the host root")
    os.chdir("/")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={limits['tmpfs_mb']}m,mode=1777")
    out_mb = limits["output_bytes"] // (1 << 20) + 2
    _mount("tmpfs", f"{SANDBOX_DIR}/private", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={out_mb}m,mode=700")
    if job["mode"] == "stdio":
        for i, text in enumerate(job["tests"]):
            with open(f"{SANDBOX_DIR}/private/in_{i}", "w") as f:
                f.write(text)
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limit(name: str, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(getattr(resource, name), (soft, soft if hard is None else hard))


def _drop_privileges(uid: int, limits: dict, seccomp: bytes) -> None:
    """Resource limits, no_new_privs, the unprivileged uid (clears capabilities), then the seccomp filter."""
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
    _install_seccomp(seccomp)


# ------------------------------------------------------------------------------------------------------------
# Plain values between P and J: JSON with tags. Only J's decoder is trusted; it builds exact built-in types.
# ------------------------------------------------------------------------------------------------------------
_SCALARS = (bool, int, float, str)


class ProtocolError(Exception):
    """The program process sent something that is not a well-formed plain value."""


def _error_text(e: BaseException) -> str:
    try:
        return f"{type(e).__name__}: {e}"[:300]
    except BaseException:  # noqa: BLE001 - a program's exception whose __str__ fails
        return type(e).__name__[:100]


def _encode_plain(v, ref=None):
    """Exact plain types as tagged JSON; anything else through `ref(v)` (P) or a TypeError (J)."""
    t = type(v)
    if v is None or t in _SCALARS:
        return v
    if t is list:
        return [_encode_plain(x, ref) for x in v]
    if t is tuple:
        return {"tuple": [_encode_plain(x, ref) for x in v]}
    if t is dict:
        return {"dict": [[_encode_plain(k, ref), _encode_plain(x, ref)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {t.__name__: [_encode_plain(x, ref) for x in v]}
    if t is bytes or t is bytearray:
        return {t.__name__: v.hex()}
    if t is complex:
        return {"complex": [v.real, v.imag]}
    if ref is None:
        raise TypeError(f"a test passed a {t.__name__} to the program: only plain data (numbers, strings, lists, "
                        "tuples, dicts, sets, bytes) and the program's own objects can be passed")
    return ref(v)


def _decode_plain(v, remote):
    """Rebuild a plain value from untrusted JSON; `remote(n)` makes a reference. Anything else: ProtocolError."""
    t = type(v)
    if v is None or t in _SCALARS:
        return v
    if t is list:
        return [_decode_plain(x, remote) for x in v]
    if t is dict and len(v) == 1:
        ((tag, x),) = v.items()
        if tag == "ref" and type(x) is int:
            return remote(x)
        if tag in ("bytes", "bytearray") and type(x) is str:
            try:
                return (bytes if tag == "bytes" else bytearray).fromhex(x)
            except ValueError:
                raise ProtocolError("malformed bytes from the program") from None
        if tag == "complex" and type(x) is list and len(x) == 2 and all(type(p) in (int, float) for p in x):
            return complex(x[0], x[1])
        if type(x) is list:
            items = [_decode_plain(y, remote) for y in x]
            try:
                if tag == "tuple":
                    return tuple(items)
                if tag == "set":
                    return set(items)
                if tag == "frozenset":
                    return frozenset(items)
                if tag == "dict" and all(type(p) is list and len(p) == 2 for p in items):
                    return {k: val for k, val in items}
            except TypeError:  # an unhashable key or set element
                raise ProtocolError("malformed set or dict from the program") from None
    raise ProtocolError("the program sent something that is not a plain value")


# ------------------------------------------------------------------------------------------------------------
# P: the program's interpreter (exec'd fresh: it holds the program and nothing of the harness)
# ------------------------------------------------------------------------------------------------------------
def _to_plain(v):
    """P's best effort to make a value plain (subclasses of plain types, numpy values); else None.

    This runs in the untrusted process, so it only helps honest programs; J checks the result again.
    """
    try:
        for base, conv in ((int, int.__int__), (float, float.__float__), (str, str.__str__)):
            if isinstance(v, base) and type(v) is not bool:
                return conv(v)
        for base in (tuple, list, set, frozenset):
            if isinstance(v, base):
                return base(base.__iter__(v))
        if isinstance(v, dict):
            return dict(dict.items(v))
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        if type(v).__module__.split(".")[0] == "numpy" and hasattr(v, "tolist"):
            return v.tolist()
    except Exception:  # noqa: BLE001
        return None
    return None


def _main_scope() -> dict:
    """A fresh `__main__` module for the program (so pickle, multiprocessing and dataclasses find its names)."""
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return main.__dict__


def _serve(req_fd: int, resp_fd: int, extra_paths: list[str]) -> int:
    sys.path.extend(p for p in extra_paths if p not in sys.path)
    sys.set_int_max_str_digits(0)
    refs: list = []
    write, dumps, loads = os.write, json.dumps, json.loads

    def ref(v):
        plain = _to_plain(v)
        if plain is not None and type(plain) is not type(v):
            return _encode_plain(plain, ref)
        refs.append(v)
        return {"ref": len(refs) - 1}

    def reply(msg: dict) -> None:
        try:
            data = (dumps(msg) + "\n").encode()
        except BaseException as e:  # noqa: BLE001 - e.g. a recursive list
            data = (dumps({"error": ["ValueError", f"the value can not be sent: {_error_text(e)}"]}) + "\n").encode()
        while data:
            data = data[write(resp_fd, data):]

    scope = _main_scope()
    try:
        with open(f"{SANDBOX_DIR}/program.py") as f:
            source = f.read()
        exec(compile(source, "<solution>", "exec"), scope)
    except BaseException as e:  # noqa: BLE001 - SystemExit included: a program that exits fails every test
        reply({"program_error": _error_text(e)})
        return 0
    reply({"ready": True})
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(req_fd, 1 << 16)
            if not chunk:
                return 0
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        try:
            reply(_answer(loads(line), scope, refs, ref))
        except BaseException as e:  # noqa: BLE001
            reply({"error": [type(e).__name__, _error_text(e)]})


def _answer(req: dict, scope: dict, refs: list, ref) -> dict:
    op = req["op"]
    if op == "names":
        out = {}
        for name in req["names"]:
            if name not in scope:
                continue
            v = scope[name]
            out[name] = {"module": v.__name__} if type(v).__name__ == "module" else {"value": _encode_plain(v, ref)}
        return {"names": out}
    obj = refs[req["ref"]]
    remote = lambda n: refs[n]  # noqa: E731 - references the judge passes back
    try:
        if op == "call":
            args = [_decode_plain(a, remote) for a in req["args"]]
            kwargs = {k: _decode_plain(a, remote) for k, a in req["kwargs"].items()}
            v = obj(*args, **kwargs)
        elif op == "getattr":
            v = getattr(obj, req["name"])
        elif op == "setattr":
            setattr(obj, req["name"], _decode_plain(req["value"], remote))
            v = None
        elif op == "getitem":
            v = obj[_decode_plain(req["key"], remote)]
        elif op == "iter":
            v = list(obj)
        elif op == "next":
            v = next(obj)
        elif op == "len":
            v = len(obj)
        elif op == "str":
            v = str(obj)
        else:
            raise ValueError(f"unknown operation {op!r}")
    except BaseException as e:  # noqa: BLE001 - reported to the judge as the program's exception
        return {"error": [type(e).__name__, _error_text(e)]}
    return {"value": _encode_plain(v, ref)}


def _run_stdio_program(extra_paths: list[str]) -> int:
    """One stdio test: the program as __main__ with the test's input on stdin (set up by B)."""
    sys.path.extend(p for p in extra_paths if p not in sys.path)
    code = 0
    try:
        with open(f"{SANDBOX_DIR}/program.py") as f:
            source = f.read()
        exec(compile(source, "<solution>", "exec"), _main_scope())
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001
        traceback.print_exc(limit=3)
        code = 1
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001
        code = code or 1
    os._exit(code & 0xFF)


# ------------------------------------------------------------------------------------------------------------
# J: the judge
# ------------------------------------------------------------------------------------------------------------
class ProgramDied(Exception):
    """The program's process ended (or stopped answering sensibly) while a test needed it."""


class ProgramError(Exception):
    """An exception raised by the program that has no built-in counterpart here."""


class _Channel:
    """Requests to P and its answers: one JSON object per line, answers capped at `cap` bytes."""

    def __init__(self, wfd: int, rfd: int, cap: int):
        self.wfd, self.rfd, self.cap, self.buf, self.dead = wfd, rfd, cap, b"", ""

    def read(self) -> dict:
        if self.dead:
            raise ProgramDied(self.dead)
        while b"\n" not in self.buf:
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                self.dead = "the program's process ended"
                raise ProgramDied(self.dead)
            self.buf += chunk
            if len(self.buf) > self.cap and b"\n" not in self.buf:
                self.buf = b""
                while True:  # drop the rest of the oversized line
                    chunk = os.read(self.rfd, 1 << 16)
                    if not chunk:
                        self.dead = "the program's process ended"
                        break
                    if b"\n" in chunk:
                        self.buf = chunk.split(b"\n", 1)[1]
                        break
                raise ProtocolError(f"the program's value is over {self.cap} bytes")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            raise ProtocolError("the program sent malformed data") from None
        if type(msg) is not dict:
            raise ProtocolError("the program sent malformed data")
        return msg

    def send(self, req: dict) -> None:
        """Write one request line to P (ProgramDied if P is gone)."""
        if self.dead:
            raise ProgramDied(self.dead)
        data = (json.dumps(req) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.wfd, data):]
        except OSError:
            self.dead = "the program's process ended"
            raise ProgramDied(self.dead) from None

    def ask(self, req: dict):
        self.send(req)
        msg = self.read()
        if "error" in msg:
            err = msg["error"]
            if type(err) is list and len(err) == 2 and all(type(x) is str for x in err):
                raise _program_exception(err[0], err[1])
            raise ProtocolError("the program sent malformed data")
        if "value" not in msg:
            raise ProtocolError("the program sent malformed data")
        return _decode_plain(msg["value"], lambda n: Remote(self, n))


def _program_exception(name: str, text: str) -> BaseException:
    """The program's exception as the built-in exception of that name (so tests can catch it), or ProgramError."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, ProtocolError):
        message = text[len(name) + 2:] if text.startswith(name + ": ") else text
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return ProgramError(text)


class Remote:
    """A reference to an object in the program's process. Only plain values come back; it has no __eq__,
    __bool__, __hash__ of the program's: equality is identity and truth is an error (the test then fails)."""

    __slots__ = ("_ch", "_n")

    def __init__(self, ch: _Channel, n: int):
        object.__setattr__(self, "_ch", ch)
        object.__setattr__(self, "_n", n)

    def _ask(self, op: str, **kw):
        return self._ch.ask({"op": op, "ref": self._n, **kw})

    def __call__(self, *args, **kwargs):
        return self._ask("call", args=[_encode_plain(a, _ref_of) for a in args],
                         kwargs={k: _encode_plain(a, _ref_of) for k, a in kwargs.items()})

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __setattr__(self, name: str, value) -> None:
        self._ask("setattr", name=name, value=_encode_plain(value, _ref_of))

    def __getitem__(self, key):
        return self._ask("getitem", key=_encode_plain(key, _ref_of))

    def __iter__(self):
        items = self._ask("iter")
        return iter(items)

    def __next__(self):
        return self._ask("next")

    def __len__(self) -> int:
        n = self._ask("len")
        if type(n) is not int:
            raise TypeError("the program's __len__ did not return an int")
        return n

    def __str__(self) -> str:
        s = self._ask("str")
        if type(s) is not str:
            raise TypeError("the program's __str__ did not return a str")
        return s

    def __repr__(self) -> str:
        return f"<the program's object #{self._n}>"

    def __eq__(self, other) -> bool:
        return self is other

    def __ne__(self, other) -> bool:
        return self is not other

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TypeError("the program returned an object that is not plain data (a number, string, list, tuple, "
                        "dict, set, bytes or None); tests can only check plain values")


def _ref_of(v):
    if type(v) is Remote:
        return {"ref": object.__getattribute__(v, "_n")}
    return _encode_plain(v)  # raises TypeError for anything else


_MODULE_ALIASES = {"np": "numpy", "pd": "pandas", "nx": "networkx", "sp": "scipy", "plt": "matplotlib.pyplot"}


def _free_names(tree: ast.AST) -> list[str]:
    return list(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                              and not hasattr(builtins, n.id)))


def _judge(job: dict, ch: _Channel, emit) -> None:
    sys.set_int_max_str_digits(0)
    try:
        first = ch.read()
    except ProgramDied:
        emit({"program_exited": True})
        return
    except ProtocolError as e:
        emit({"program_error": _error_text(e)})
        return
    if "program_error" in first:
        pe = first["program_error"]
        emit({"program_error": pe[:300] if type(pe) is str else "malformed report"})
        return
    scope = {"__name__": "__main__", "__builtins__": builtins}
    test_bound: set[str] = set()  # names the tests themselves assign: never taken from the program
    for i, test in enumerate(job["tests"]):
        try:
            tree = ast.parse(test, f"<test {i}>")
            code = compile(tree, f"<test {i}>", "exec")
            names = [n for n in _free_names(tree) if n not in test_bound]
            _bind_from_program(ch, names, scope)
            test_bound.update(_assigned_names(tree))
            exec(code, scope)
            emit({"test": i, "ok": True})
        except BaseException as e:  # noqa: BLE001
            emit({"test": i, "ok": False, "error": _error_text(e)})


def _assigned_names(tree: ast.Module) -> set[str]:
    """Names a test binds at module level (assignments, imports, defs), which later tests may use."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            out.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return out


def _bind_from_program(ch: _Channel, names: list[str], scope: dict) -> None:
    """Bind the names a test takes from the program: a module is imported here (the program's copy may be
    patched), anything else becomes a plain value or a Remote. Builtins are always this interpreter's."""
    if not names:
        return
    answer = _ask_names(ch, names)
    for name, desc in answer.items():
        if name not in names or type(desc) is not dict:
            continue
        if "module" in desc:
            mod = desc["module"]
            if type(mod) is str and (mod == name or mod.rsplit(".", 1)[-1] == name
                                     or _MODULE_ALIASES.get(name) == mod):
                try:
                    scope[name] = __import__(mod, fromlist=["_"] if "." in mod else [])
                except ImportError:
                    pass
        elif "value" in desc:
            scope[name] = _decode_plain(desc["value"], lambda n: Remote(ch, n))


def _ask_names(ch: _Channel, names: list[str]) -> dict:
    ch.send({"op": "names", "names": names})
    msg = ch.read()
    if type(msg.get("names")) is not dict:
        raise ProtocolError("the program sent malformed data")
    return msg["names"]


def _emitter(fd: int, nonce: str):
    """A function that writes one `<nonce>{json}` line per record to the results pipe (only J and B hold it)."""
    write, quote = os.write, _quote

    def emit(record: dict) -> None:
        fields = []
        for key, value in record.items():
            text = ("true" if value else "false") if value is True or value is False else (
                "%d" % value if type(value) is int else quote(value))
            fields.append(quote(key) + ": " + text)
        write(fd, (nonce + "{" + ", ".join(fields) + "}\n").encode())

    return emit


# ------------------------------------------------------------------------------------------------------------
# B: init of the pid namespace
# ------------------------------------------------------------------------------------------------------------
def _alive_processes(exclude: set[int]) -> list[int]:
    """Live (not zombie) processes in this pid namespace, other than pid 1 and `exclude`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == 1 or int(d) in exclude:
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            out.append(int(d))
    return out


def _reap(statuses: dict[int, int]) -> None:
    """Reap every exited child; keep the statuses of those in `statuses` (pid -> -1 until known)."""
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in statuses:
            statuses[pid] = st


def _kill_strays(exclude: set[int], statuses: dict[int, int]) -> int:
    """Kill the program's remaining processes; returns how many were alive. (See `_reap` for `statuses`.)"""
    strays = _alive_processes(exclude)
    for _ in range(100):
        alive = _alive_processes(exclude)
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.001)
        _reap(statuses)
    return len(strays)


def _move_fds(mapping: dict[int, int]) -> None:
    """In a child about to exec: make fd `target` a copy of `source` for each item; close every other fd >= 3."""
    import fcntl
    tmp = {t: fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, 100) for t, s in mapping.items()}
    for t, s in tmp.items():
        os.dup2(s, t)
    os.closerange(max(list(mapping) + [2]) + 1, 1 << 16)


def _exec_program(mode: str, uid: int, job: dict, seccomp: bytes, fds: dict[int, int]) -> None:
    """In a forked child of B: become the program's process (never returns)."""
    code = SETUP_FAILED_EXIT
    try:
        _move_fds(fds)
        exe = job["_exe"]
        argv = [exe, "-I", "-S", "-B", f"{SANDBOX_DIR}/child.py", f"--{mode}", json.dumps(job["extra_paths"])]
        _drop_privileges(uid, job["limits"], seccomp)
        os.execve(exe, argv, dict(os.environ))
    except BaseException:  # noqa: BLE001
        traceback.print_exc(limit=3)
    finally:
        os._exit(code)


def _asserts_mode(job: dict, uid: int, seccomp: bytes, results_fd: int, status_fd: int) -> dict:
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    null = os.open("/dev/null", os.O_RDONLY)
    program = os.fork()
    if program == 0:
        _exec_program("asserts", uid, job, seccomp, {0: null, 3: req_r, 4: resp_w})
    judge = os.fork()
    if judge == 0:
        code = 0
        try:
            for fd in (req_r, resp_w, status_fd):
                os.close(fd)
            os.dup2(null, 0)
            _drop_privileges(uid + JUDGE_UID_OFFSET, job["limits"], seccomp)
            cap = max(8 * job["limits"]["output_bytes"], 1 << 20)
            _judge(job, _Channel(req_w, resp_r, cap), _emitter(results_fd, job["nonce"]))
        except BaseException:  # noqa: BLE001
            traceback.print_exc(limit=3)
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    for fd in (req_r, req_w, resp_r, resp_w, results_fd, null):
        os.close(fd)
    statuses = {program: -1, judge: -1}
    strays = 0
    while statuses[program] == -1 or statuses[judge] == -1:
        try:
            pid, st = os.wait()
        except ChildProcessError:  # (both were reaped by _reap)
            break
        if pid in statuses:
            statuses[pid] = st
        if pid == program:
            # the program is done: its remaining processes are strays; ending them also ends the judge's wait
            _reap(statuses)
            strays = _kill_strays({judge} if statuses[judge] == -1 else set(), statuses)
    st = statuses[program]
    return {"exit": os.WEXITSTATUS(st) if os.WIFEXITED(st) else None,
            "signal": os.WTERMSIG(st) if os.WIFSIGNALED(st) else None,
            "judge_exit": os.WEXITSTATUS(statuses[judge]) if os.WIFEXITED(statuses[judge]) else None,
            "stray_processes": strays}


def _stdio_mode(job: dict, uid: int, seccomp: bytes, results_fd: int) -> dict:
    emit = _emitter(results_fd, job["nonce"])
    limits = job["limits"]
    strays = 0
    for i in range(len(job["tests"])):
        out_path = f"{SANDBOX_DIR}/private/out"
        out = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.unlink(out_path)
        stdin = os.open(f"{SANDBOX_DIR}/private/in_{i}", os.O_RDONLY)
        pid = os.fork()
        if pid == 0:
            _exec_program("stdio", uid, job, seccomp, {0: stdin, 1: out})
        os.close(stdin)
        deadline = time.monotonic() + limits["test_timeout_s"]
        status = None
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            else:
                time.sleep(0.002)
        strays += _kill_strays(set(), {})
        if status is None:
            rec = {"test": i, "timeout": True}
        else:
            text = os.pread(out, limits["output_bytes"], 0).decode("utf-8", "replace")
            if os.WIFSIGNALED(status):
                rec = {"test": i, "signal": os.WTERMSIG(status), "stdout": text}
            else:
                rec = {"test": i, "exit": os.WEXITSTATUS(status), "stdout": text}
        os.close(out)
        emit(rec)
    os.close(results_fd)
    return {"exit": 0, "signal": None, "stray_processes": strays}


def _namespace_init(job: dict, uid: int, status_fd: int, results_fd: int) -> int:
    _die_with_parent()
    seccomp = _seccomp_filter()
    job["_exe"] = os.path.realpath(sys.executable)
    extra = [p for p in job["extra_paths"] if os.path.isdir(p)]
    sys.path.extend(p for p in extra if p not in sys.path)  # the judge imports a test's modules from these too
    python_dirs = [sys.base_prefix, os.path.dirname(job["_exe"])] + [p for p in sys.path if p] + extra
    _build_root(job, python_dirs, {"sandbox": uid, "judge": uid + JUDGE_UID_OFFSET})
    os.chdir(WORKDIR)
    if job["mode"] == "asserts":
        status = _asserts_mode(job, uid, seccomp, results_fd, status_fd)
    else:
        status = _stdio_mode(job, uid, seccomp, results_fd)
    _reap({})
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
    if len(sys.argv) == 3 and sys.argv[1] in ("--asserts", "--stdio"):  # P, inside the sandbox
        extra = json.loads(sys.argv[2])
        if sys.argv[1] == "--asserts":
            os._exit(_serve(3, 4, extra))
        return _run_stdio_program(extra)
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
