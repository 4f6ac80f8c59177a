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
