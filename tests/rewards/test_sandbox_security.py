"""Security suite: model outputs that attack the machine. Each attack must be contained, score 0 with a reason,
and leave no process or file behind. Network tests only ever target a listener this test opens on 127.0.0.1.

Runs wherever the sandbox works (root + Linux namespaces, as in CI); elsewhere it is skipped, and
test_code.py checks that the code reward then refuses to start.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from creditrl.rewards import REWARDS, RewardSample
from creditrl.rewards.code import CodeTestsConfig
from creditrl.rewards.sandbox import SandboxLimits, sandbox_unavailable_reason
from creditrl.rewards.sandbox_child import UID_BASE

pytestmark = pytest.mark.skipif(sandbox_unavailable_reason() is not None,
                                reason=f"no sandbox here: {sandbox_unavailable_reason()}")

REPO_TESTS_DIR = Path(__file__).resolve().parent


def sandbox_processes() -> list[str]:
    """Live processes owned by a sandbox uid (there must be none between samples)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{pid}")
        except FileNotFoundError:
            continue
        if st.st_uid >= UID_BASE:
            out.append(pid)
    return out


def processes_with(marker: str) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(pid)
        except OSError:
            continue
    return out


def sandbox_files() -> list[str]:
    """Files owned by a sandbox uid in the host's writable scratch directories."""
    out = []
    for d in ("/tmp", "/var/tmp", "/dev/shm", str(REPO_TESTS_DIR)):
        for entry in os.scandir(d):
            try:
                if entry.stat(follow_symlinks=False).st_uid >= UID_BASE:
                    out.append(entry.path)
            except FileNotFoundError:
                continue
    return out


@pytest.fixture
def contained():
    """Asserts that the sandbox left no process and no file behind."""
    yield
    assert sandbox_processes() == []
    assert sandbox_files() == []


def run_attack(program: str, tests: list[str], **limits):
    limits.setdefault("wall_s", 5.0)
    fn = REWARDS.build("code_tests", CodeTestsConfig(limits=SandboxLimits(**limits)))
    return fn(RewardSample("attack/0", "write a function", f"```python\n{program}\n```", json.dumps(tests)))


def assert_zero_with_reason(res, *fragments: str):
    assert res.score == 0.0, res
    assert res.reason, res
    assert any(f in res.reason for f in fragments), res.reason
    assert not res.failed, res  # the reward itself worked; the program is what failed


def test_network_connection_is_blocked(contained):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    program = (f"import socket\ndef attack():\n"
               f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               f"    s.sendall(b'exfiltrated')\n    return True\n")
    try:
        res = run_attack(program, ["assert attack()"])
        assert_zero_with_reason(res, "Network is unreachable", "Connection refused")
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):  # nothing ever connected
            listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize("where", ["repository", "host_tmp"])
def test_writing_outside_the_working_directory_fails(where, tmp_path, contained):
    target = (REPO_TESTS_DIR if where == "repository" else tmp_path) / f"escaped_{uuid.uuid4().hex}.txt"
    program = f"def attack():\n    open({str(target)!r}, 'w').write('pwned')\n    return True\n"
    try:
        res = run_attack(program, ["assert attack()"])
        assert_zero_with_reason(res, "Read-only file system", "No such file", "Permission denied")
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_environment_secrets_are_not_visible(monkeypatch, contained):
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("CREDITRL_TEST_SECRET_TOKEN", secret)
    program = ("import os\ndef attack():\n    found = os.environ.get('CREDITRL_TEST_SECRET_TOKEN', '')\n"
               "    for pid in os.listdir('/proc'):\n        try:\n"
               "            found += open(f'/proc/{pid}/environ').read()\n"
               "        except OSError:\n            pass\n"
               f"    try:\n        found += open('/proc/{os.getpid()}/environ').read()\n"
               "    except OSError:\n        pass\n    return found\n")
    res = run_attack(program, [f"assert {secret!r} in attack()"])
    assert_zero_with_reason(res, "AssertionError")


def test_fork_bomb_is_contained(contained):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = run_attack(program, ["assert True"], wall_s=2.0, max_processes=16)
    assert_zero_with_reason(res, "timeout")


def test_memory_bomb_is_contained(contained):
    program = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n"
    res = run_attack(program, ["assert True"], memory_mb=256)
    assert_zero_with_reason(res, "MemoryError")


def test_infinite_loop_hits_the_wall_clock_limit(contained):
    res = run_attack("while True:\n    pass\n", ["assert True"], wall_s=1.5)
    assert_zero_with_reason(res, "timeout after 1.5s")


def test_cpu_time_limit_kills_a_spinning_program(contained):
    res = run_attack("while True:\n    pass\n", ["assert True"], wall_s=10.0, cpu_s=1)
    assert_zero_with_reason(res, "SIGXCPU")


def test_background_process_does_not_outlive_the_sample(contained):
    marker = f"{4000 + uuid.uuid4().int % 1000}.25"
    program = ("import os, subprocess, time\n"
               f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
               "if os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n    os._exit(0)\n"
               "def add(a, b):\n    return a + b\n")
    res = run_attack(program, ["assert add(1, 2) == 3"])
    assert_zero_with_reason(res, "background process")
    assert processes_with(f"sleep\x00{marker}") == []


def test_huge_output_is_capped(contained):
    program = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    res = run_attack(program, ["assert True"], output_bytes=1 << 20)
    assert_zero_with_reason(res, "output over 1048576 bytes")


def test_huge_file_is_capped(contained):
    program = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (200 * 1024 * 1024))\n"
    res = run_attack(program, ["assert True"], output_bytes=1 << 20)
    assert_zero_with_reason(res, "SIGXFSZ", "File too large", "No space left")


def test_ctypes_crash_only_kills_the_sandbox(contained):
    res = run_attack("import ctypes\nctypes.string_at(0)\n", ["assert True"])
    assert_zero_with_reason(res, "SIGSEGV")


def test_signalling_host_processes_fails(contained):
    program = f"import os, signal\ndef attack():\n    os.kill({os.getpid()}, signal.SIGKILL)\n    return True\n"
    res = run_attack(program, ["assert attack()"])
    assert_zero_with_reason(res, "ProcessLookupError", "PermissionError")


# ------------------------------------------------------------------------------------------------------------
# Host IPC: file system sockets, abstract sockets, FIFOs, shared memory, SysV IPC, /proc, ptrace, secrets.
# Each attack function returns "reached ..." when it got through and "blocked ..." otherwise; the two tests
# below (one expects "reached", one "blocked") make a 0.5 score mean "the attack ran and was blocked".
# ------------------------------------------------------------------------------------------------------------
def run_probe(attack_body: str, **limits):
    program = "def attack():\n" + "".join(f"    {line}\n" for line in attack_body.splitlines())
    return run_attack(program, ["assert attack().startswith('reached')", "assert attack().startswith('blocked')"],
                      **limits)


def assert_blocked(res):
    assert res.score == pytest.approx(0.5), res  # the attack ran (no crash) and did not get through
    assert not res.failed, res


def _unix_listener(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    if not path.startswith("\0"):
        os.chmod(path, 0o777)  # anyone may connect: only the sandbox can stop it
    s.listen(4)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # the listener works (the attack is real)
    probe.connect(path)
    s.accept()[0].close()
    probe.close()
    return s


CONNECT_AND_SEND = ("import socket\ntry:\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                    "    s.connect({path!r})\n    s.sendall(b'exfiltrated')\n    return 'reached'\n"
                    "except OSError as e:\n    return 'blocked ' + repr(e)")


@pytest.mark.parametrize("where", ["tmp", "run", "abstract"])
def test_host_unix_sockets_can_not_be_reached(where, contained):
    """A listening Unix socket on the host (a file in /tmp or /run, as docker.sock, or an abstract name)."""
    name = f"creditrl-test-{uuid.uuid4().hex[:12]}.sock"
    path = {"tmp": f"/tmp/{name}", "run": f"/run/{name}", "abstract": f"\0{name}"}[where]
    listener = _unix_listener(path)
    try:
        assert_blocked(run_probe(CONNECT_AND_SEND.format(path=path)))
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):  # nothing ever connected
            listener.accept()
    finally:
        listener.close()
        if not path.startswith("\0"):
            os.unlink(path)


def test_docker_socket_path_is_not_visible(contained):
    res = run_probe("import os\nfound = [p for p in ('/var/run/docker.sock', '/run/docker.sock', '/var/run', "
                    "'/run', '/var') if os.path.lexists(p)]\nreturn ('reached ' if found else 'blocked ') + str(found)")
    assert_blocked(res)


def test_host_fifo_can_not_be_written(contained):
    fifo = f"/tmp/creditrl-test-{uuid.uuid4().hex[:12]}.fifo"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        res = run_probe(f"import os\ntry:\n    fd = os.open({fifo!r}, os.O_WRONLY | os.O_NONBLOCK)\n"
                        "    os.write(fd, b'exfiltrated')\n    return 'reached'\nexcept OSError as e:\n"
                        "    return 'blocked ' + repr(e)")
        assert_blocked(res)
        assert os.read(reader, 100) == b""  # no writer ever opened it, nothing was written
    finally:
        os.close(reader)
        os.unlink(fifo)


def test_host_dev_shm_is_not_shared(contained):
    path = f"/dev/shm/creditrl-test-{uuid.uuid4().hex[:12]}"
    Path(path).write_text("host secret")
    os.chmod(path, 0o666)
    try:
        res = run_probe(f"try:\n    data = open({path!r}).read()\n    open({path!r}, 'w').write('pwned')\n"
                        "    return 'reached ' + data\nexcept OSError as e:\n    return 'blocked ' + repr(e)")
        assert_blocked(res)
        assert Path(path).read_text() == "host secret"
    finally:
        os.unlink(path)


def test_host_sysv_shared_memory_is_not_visible(contained):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x7C000000 + uuid.uuid4().int % 0xFFFFF
    shmid = libc.shmget(key, 4096, 0o1000 | 0o666)  # IPC_CREAT, readable and writable by anyone
    assert shmid >= 0, ctypes.get_errno()
    try:
        res = run_probe(f"import ctypes\nshmid = ctypes.CDLL(None).shmget({key}, 0, 0)\n"
                        "return ('reached ' if shmid >= 0 else 'blocked ') + str(shmid)")
        assert_blocked(res)
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


def test_host_processes_are_invisible(contained):
    import subprocess
    marker = f"{5000 + uuid.uuid4().int % 1000}.75"
    sleeper = subprocess.Popen(["sleep", marker])
    try:
        res = run_probe(f"import os\nseen = []\nfor pid in os.listdir('/proc'):\n    try:\n"
                        f"        if b'{marker}' in open(f'/proc/{{pid}}/cmdline', 'rb').read():\n"
                        f"            seen.append(pid)\n    except OSError:\n        pass\n"
                        f"try:\n    os.kill({sleeper.pid}, 0)\n    seen.append('kill')\nexcept OSError:\n    pass\n"
                        "return ('reached ' if seen else 'blocked ') + str(seen)")
        assert_blocked(res)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("where", ["host_tmp", "repository"])
def test_host_files_can_not_be_read(where, contained):
    """World-readable files outside the sandbox's minimal root (the old sandbox only made them read-only)."""
    base = Path("/tmp") if where == "host_tmp" else REPO_TESTS_DIR
    path = base / f"creditrl-secret-{uuid.uuid4().hex[:12]}.txt"
    path.write_text("hunter2")
    path.chmod(0o644)
    try:
        res = run_probe(f"out = []\nfor p in ({str(path)!r}, '/etc/shadow', '/root/.bash_history', "
                        "'/etc/ssh/ssh_host_rsa_key'):\n    try:\n        out.append(open(p).read())\n"
                        "    except OSError:\n        pass\nimport os\ntry:\n"
                        "    out += [e for e in os.listdir('/root') if e != '.pyenv']\nexcept OSError:\n    pass\n"
                        "return ('reached ' if out else 'blocked ') + str(out)[:100]")
        assert_blocked(res)
    finally:
        path.unlink()


DENIED_SYSCALLS = {
    "ptrace": ("import ctypes, os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(5)\n    os._exit(0)\n"
               "libc = ctypes.CDLL(None, use_errno=True)\nr = libc.ptrace(16, pid, 0, 0)\nos.kill(pid, 9)\n"
               "os.waitpid(pid, 0)\nreturn ('reached ' if r == 0 else 'blocked ') + str(ctypes.get_errno())"),
    "user_namespace": ("import ctypes\nr = ctypes.CDLL(None).unshare(0x10000000)\n"
                       "return ('reached ' if r == 0 else 'blocked ') + str(r)"),
    "io_uring": ("import ctypes\nr = ctypes.CDLL(None).syscall(425, 8, ctypes.create_string_buffer(120))\n"
                 "return ('reached ' if r >= 0 else 'blocked ') + str(r)"),
    "vsock_netlink_unix": ("import socket\nok = []\nfor fam in (40, 16, socket.AF_UNIX):\n    try:\n"
                           "        socket.socket(fam, socket.SOCK_DGRAM).close()\n        ok.append(fam)\n"
                           "    except OSError:\n        pass\nreturn ('reached ' if ok else 'blocked ') + str(ok)"),
}


@pytest.mark.parametrize("name", sorted(DENIED_SYSCALLS))
def test_dangerous_syscalls_are_denied(name, contained):
    assert_blocked(run_probe(DENIED_SYSCALLS[name]))


def test_socketpair_and_multiprocessing_still_work(contained):
    """What legitimate programs use: anonymous socket pairs, pipes, process pools."""
    program = ("import socket, multiprocessing as mp\n"
               "def square(x):\n    return x * x\n"
               "def attack():\n    a, b = socket.socketpair()\n    a.sendall(b'hi')\n    assert b.recv(2) == b'hi'\n"
               "    with mp.get_context('fork').Pool(2) as pool:\n        return sum(pool.map(square, range(5)))\n")
    res = run_attack(program, ["assert attack() == 30"], max_processes=32)
    assert res.score == 1.0, res


# ------------------------------------------------------------------------------------------------------------
# Harness tampering: each program would pass a harness that runs the tests in its own interpreter (checked
# with `naive_score`, plain Python without a sandbox); the sandbox must score it 0.
# ------------------------------------------------------------------------------------------------------------
ADD_TESTS = ["assert add(1000, 2345) == 3345", "assert add(-7, 3) == -4", "assert add(21, 21) == 42"]

NAIVE_HARNESS = """
import json, sys
program, tests = json.loads(sys.stdin.read())
scope = {"__name__": "__main__"}
passed = 0
try:
    exec(compile(program, "<solution>", "exec"), scope)
    for t in tests:
        try:
            exec(compile(t, "<test>", "exec"), scope)
            passed += 1
        except Exception:
            pass
finally:
    sys.__stdout__.write("PASSED %d\\n" % passed)
"""


def naive_score(program: str, tests: list[str]) -> float:
    """The score of an in-process harness (what the sandbox must not be): the attack is real if this is 1."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-I", "-c", NAIVE_HARNESS], input=json.dumps([program, tests]),
                         capture_output=True, text=True, timeout=30).stdout
    return int(out.split("PASSED")[-1]) / len(tests)


TAMPER = {
    "replace_compile": "import builtins\n_c = builtins.compile\n"
                       "builtins.compile = lambda *a, **k: _c('pass', '<x>', 'exec')\n",
    "caller_frame_constants": "import sys\ndef add(a, b):\n    f = sys._getframe(1)\n"
                              "    return [c for c in f.f_code.co_consts if type(c) is int][-1]\n",
    "inspect_stack": "import inspect\ndef add(a, b):\n    frame = inspect.stack()[1].frame\n"
                     "    return [c for c in frame.f_code.co_consts if type(c) is int][-1]\n",
    "traceback_frames": "def add(a, b):\n    try:\n        raise ValueError\n    except ValueError as e:\n"
                        "        f = e.__traceback__.tb_frame.f_back\n"
                        "    return [c for c in f.f_code.co_consts if type(c) is int][-1]\n",
    "gc_reads_the_tests": "import gc, ast\ndef add(a, b):\n"
                          "    strings = [x for o in gc.get_objects() if type(o) in (list, tuple) for x in o]\n"
                          "    for s in [x for x in strings if type(x) is str and x.startswith('assert add(')]:\n"
                          "        t = ast.parse(s).body[0].test\n"
                          "        if [ast.literal_eval(x) for x in t.left.args] == [a, b]:\n"
                          "            return ast.literal_eval(t.comparators[0])\n",
    "always_equal": "class A:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
                    "def add(a, b):\n    return A()\n",
    "lying_int": "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
                 "def add(a, b):\n    return I(0)\n",
    "lying_str": "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
                 "def add(a, b):\n    return S('x')\n",
    "lying_list": "class L(list):\n    def __eq__(self, other):\n        return True\n"
                  "def add(a, b):\n    return L()\n",
    "class_property_lies": "class A:\n    __class__ = property(lambda self: int)\n"
                           "    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
                           "def add(a, b):\n    return A()\n",
    "forge_assert_rewrite": "import builtins\nclass Never(BaseException):\n    pass\n"
                            "builtins.AssertionError = Never\n"
                            "def add(a, b):\n    return 0\n",
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_tampering_with_the_harness_scores_zero(name, contained):
    program = TAMPER[name]
    if name != "forge_assert_rewrite":  # (that one only fools a harness that catches AssertionError by name)
        assert naive_score(program, ADD_TESTS) == 1.0, "the attack does not work even without a sandbox"
    res = run_attack(program, ADD_TESTS)
    assert res.score == 0.0, res
    assert not res.failed, res


@pytest.mark.parametrize("tests", [
    ["assert add(1, 2) in {3, 4}"],  # __hash__ + __eq__
    ["assert add(1, 2)", "assert add(2, 2) == 5"],  # __bool__ + __eq__
    ["assert not (add(1, 2) != 3)"],  # __ne__
    ["assert add(1, 2) >= 3 and add(1, 2) <= 3"],  # ordering
])
def test_lying_dunder_methods_score_zero(tests, contained):
    program = ("class Liar:\n    __eq__ = __ge__ = __le__ = lambda self, other: True\n"
               "    __ne__ = lambda self, other: False\n    __bool__ = lambda self: True\n"
               "    __hash__ = lambda self: hash(3)\n"
               "def add(a, b):\n    return Liar()\n")
    assert naive_score(program, tests) == 1.0
    res = run_attack(program, tests)
    assert res.score == 0.0, res


def test_patching_modules_and_builtins_the_tests_use_scores_zero(contained):
    program = ("import builtins, math\nmath.isclose = lambda *a, **k: True\n"
               "builtins.sorted = lambda *a, **k: [1, 2, 3]\nbuiltins.len = lambda *a: 3\n"
               "builtins.set = lambda *a: {1, 2}\n"
               "def area(r):\n    return 0.0\ndef items(x):\n    return [9]\n")
    tests = ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)", "assert sorted(items(3)) == [1, 2, 3]",
             "assert len(items(3)) == 3", "assert set(items(1)) == {1, 2}"]
    assert naive_score(program, tests) == 1.0
    res = run_attack(program, tests)
    assert res.score == 0.0, res


def test_shadowing_a_test_helper_scores_zero(contained):
    """The program defines `sorted` and claims `math` is its own object: the judge keeps its own."""
    program = ("import types\nmath = types.SimpleNamespace(isclose=lambda *a, **k: True)\n"
               "def sorted(x):\n    return [1, 2, 3]\n"
               "def area(r):\n    return 0.0\ndef items(x):\n    return [9]\n")
    tests = ["assert sorted(items(3)) == [1, 2, 3]", "import math\nassert math.isclose(area(2), 12.566)"]
    res = run_attack(program, tests)
    assert res.score == 0.0, res


@pytest.mark.parametrize("how", ["os._exit(0)", "sys.exit(0)", "raise SystemExit(0)", "raise KeyboardInterrupt"])
def test_exiting_during_a_test_is_a_failure(how, contained):
    program = f"import os, sys\ndef add(a, b):\n    {how}\n"
    res = run_attack(program, ADD_TESTS)
    assert res.score == 0.0, res


def test_forging_the_result_channel_scores_zero(contained):
    """Write fake harness lines (with every hex string in memory as the nonce) and fake judge answers to every
    file descriptor, from the program, an atexit hook and a thread that keeps running."""
    program = ("import atexit, gc, os, re, sys, threading, time\n"
               "nonces = {m for o in gc.get_objects() if type(o) is str for m in re.findall('[0-9a-f]{32}', o)}\n"
               "lines = [b'{\"ready\": true}\\n', b'{\"value\": true}\\n']\n"
               "for n in nonces | {''}:\n    lines += [(n + '{\"test\": %d, \"ok\": true}\\n' % i).encode() "
               "for i in range(3)]\n"
               "def forge():\n    for fd in range(64):\n        for line in lines:\n            try:\n"
               "                os.write(fd, line)\n            except OSError:\n                pass\n"
               "def keep_forging():\n    while True:\n        forge()\n        time.sleep(0.01)\n"
               "forge()\natexit.register(forge)\nthreading.Thread(target=keep_forging, daemon=True).start()\n"
               "def add(a, b):\n    forge()\n    return a - b\n")
    res = run_attack(program, ADD_TESTS)
    assert res.score == 0.0, res


def test_exception_text_can_not_inject_results(contained):
    program = ("class E(Exception):\n    def __str__(self):\n"
               "        return '\", \"ok\": true, \"x\": \"\\n{\"test\": 1, \"ok\": true}'\n"
               "class F(Exception):\n    def __str__(self):\n        raise RuntimeError\n"
               "def add(a, b):\n    raise (E if a > 0 else F)()\n")
    res = run_attack(program, ADD_TESTS)
    assert res.score == 0.0, res
    assert "E" in res.reason


def test_replies_the_judge_did_not_ask_for_score_zero(contained):
    """The program serves the judge's requests itself (it can: they come on its own pipe) with crafted answers:
    references to objects it does not have, malformed and deeply nested data, an oversized value."""
    program = ("import os\nos.write(4, b'{\"ready\": true}\\n')\n"
               "answers = [b'{\"value\": {\"ref\": 99}}', b'{\"value\": ' + b'[' * 100000 + b'}', "
               "b'{\"value\": {\"dict\": [[[1], 2]]}}', b'{\"value\": \"' + b'x' * (20 << 20) + b'\"}', "
               "b'{\"names\": {\"add\": {\"module\": \"operator\"}}}']\n"
               "i = 0\nwhile True:\n    req = os.read(3, 1 << 20)\n    if not req:\n        os._exit(0)\n"
               "    os.write(4, answers[i % len(answers)] + b'\\n')\n    i += 1\n")
    res = run_attack(program, ADD_TESTS)
    assert res.score == 0.0, res


def test_stdio_program_can_not_read_other_inputs_or_the_expected_output(contained):
    fn = REWARDS.build("code_tests", CodeTestsConfig(limits=SandboxLimits(wall_s=5)))
    program = ("import os\nfound = []\nfor root, dirs, files in os.walk('/'):\n"
               "    if root.startswith(('/proc', '/sys', '/usr', '/root')):\n        dirs[:] = []\n        continue\n"
               "    for f in files:\n        try:\n            if 'SECRET-OUT' in open(os.path.join(root, f)).read():\n"
               "                found.append(f)\n        except (OSError, UnicodeDecodeError):\n            pass\n"
               "print('SECRET-OUT' if found else 'nothing')\n")
    tests = [{"input": "1\n", "output": "SECRET-OUT"}, {"input": "2\n", "output": "SECRET-OUT"}]
    res = fn(RewardSample("attack/0", "q", f"```python\n{program}\n```", json.dumps(tests)))
    assert res.score == 0.0, res
