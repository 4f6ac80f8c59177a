"""code_tests: extraction, test formats, pass-rate / all-or-nothing scoring, reasons, start-up refusal."""

import json

import pytest

from creditrl.rewards import REWARDS, RewardConfigError, RewardSample
from creditrl.rewards import code as code_mod
from creditrl.rewards.code import CodeTestsConfig, extract_code, normalize_output, parse_tests
from creditrl.rewards.sandbox import SandboxLimits, sandbox_unavailable_reason

needs_sandbox = pytest.mark.skipif(sandbox_unavailable_reason() is not None,
                                   reason=f"no sandbox here: {sandbox_unavailable_reason()}")

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
GOOD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
ASSERTS = json.dumps(GOOD_TESTS + ["assert add(2, 2) == 5"])  # the last test is wrong on purpose


def _score(response: str, tests, **cfg):
    cfg.setdefault("limits", SandboxLimits(wall_s=5))
    fn = REWARDS.build("code_tests", CodeTestsConfig(**cfg))
    answer = tests if isinstance(tests, str) else json.dumps(tests)
    return fn(RewardSample("t/0", "write add", response, answer))


def test_extract_code_takes_the_last_block():
    assert extract_code("x\n```python\na=1\n```\ny\n```py\nb=2\n```") == "b=2\n"
    assert extract_code("```\nc=3\n```") == "c=3\n"
    assert extract_code("```Python3\nd=4\n```") == "d=4\n"
    assert extract_code("no code") is None


def test_parse_tests_forms_and_errors():
    assert parse_tests('["assert f(1) == 2"]').mode == "asserts"
    t = parse_tests([{"input": "1\n", "output": "2\n"}])
    assert (t.mode, t.inputs, t.expected) == ("stdio", ["1\n"], ["2\n"])
    for bad in ["not json", "[]", '{"a": 1}', '["assert 1", {"input": "", "output": ""}]', '[{"input": 1}]']:
        with pytest.raises(ValueError):
            parse_tests(bad)


def test_normalize_output():
    assert normalize_output("1 \n2\t\n\n\n") == "1\n2"
    assert normalize_output("1\n2") != normalize_output("1\n3")


@needs_sandbox
def test_pass_rate_and_all_or_nothing():
    res = _score(ADD, ASSERTS)
    assert res.score == pytest.approx(2 / 3)
    assert "2/3 tests passed" in res.reason and "AssertionError" in res.reason
    assert _score(ADD, ASSERTS, scoring="all_or_nothing").score == 0.0
    assert _score(ADD, GOOD_TESTS, scoring="all_or_nothing").score == 1.0


@needs_sandbox
def test_stdio_tests_compare_outputs_outside():
    prog = "```python\nn = int(input())\nprint(n * 2)   \n```"
    tests = [{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10"}, {"input": "1\n", "output": "3\n"}]
    res = _score(prog, tests)
    assert res.score == pytest.approx(2 / 3) and "wrong output" in res.reason
    crash = _score("```python\nraise SystemExit(3)\n```", tests)
    assert crash.score == 0.0 and "exit code 3" in crash.reason


@needs_sandbox
def test_tests_from_meta_take_precedence():
    fn = REWARDS.build("code_tests", CodeTestsConfig())
    sample = RewardSample("t/0", "q", ADD, "ignored", meta={"tests": ["assert add(2, 3) == 5"]})
    assert fn(sample).score == 1.0


@needs_sandbox
def test_no_code_block():
    assert _score("def add(a, b): return a + b", ASSERTS).reason == "no code block found"
    assert _score("def add(a, b): return a + b", ASSERTS, require_code_block=False).score == pytest.approx(2 / 3)


@needs_sandbox
@pytest.mark.parametrize("program, reason", [
    ("def add(a, b) return a + b", "SyntaxError"),
    ("import sys\nsys.exit(0)\ndef add(a, b): return a + b", "SystemExit"),  # exiting early passes nothing
])
def test_program_errors_score_zero(program, reason):
    res = _score(f"```python\n{program}\n```", ASSERTS)
    assert res.score == 0.0 and reason in res.reason and not res.failed


@needs_sandbox
def test_results_without_the_nonce_are_ignored():
    """A program that prints fake harness lines on every file descriptor gains nothing."""
    forge = ("import os, json\nline = (json.dumps({'test': 0, 'ok': True}) + '\\n').encode()\n"
             "for fd in range(64):\n    try:\n        os.write(fd, line)\n    except OSError:\n        pass\n"
             "os._exit(0)\n")
    res = _score(f"```python\n{forge}\n```", ASSERTS)
    assert res.score == 0.0


def test_refuses_to_start_without_a_sandbox(monkeypatch):
    monkeypatch.setattr(code_mod, "sandbox_unavailable_reason", lambda: "no namespaces on this machine")
    with pytest.raises(RewardConfigError, match="refuses to run model-written code: no namespaces"):
        REWARDS.build("code_tests", CodeTestsConfig())


def test_bad_limits():
    with pytest.raises(ValueError, match="wall_s"):
        SandboxLimits(wall_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=16)


@needs_sandbox
def test_site_packages_are_opt_in():
    program = "```python\nimport numpy as np\ndef total(xs):\n    return int(np.sum(xs))\n```"
    tests = ["assert total([1, 2, 3]) == 6"]
    without = _score(program, tests)
    assert without.score == 0.0 and "ModuleNotFoundError" in without.reason
    assert _score(program, tests, site_packages=True).score == 1.0


@needs_sandbox
def test_monkeypatching_the_writer_does_not_forge_results():
    forge = ("import os, json\nreal = os.write\n"
             "os.write = lambda fd, b: real(fd, b.replace(b'false', b'true'))\n"
             "json.dumps = lambda *a, **k: '{\"test\": 0, \"ok\": true}'\n"
             "def add(a, b):\n    return a - b\n")
    res = _score(f"```python\n{forge}\n```", ASSERTS)
    assert res.score == 0.0 and "0/3 tests passed" in res.reason
