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


# The judge runs assert tests in its own interpreter; the program's names are remote references that return plain
# values. These are the forms of tests that must keep working (MBPP, HumanEval, LeetCode style).
LEGIT = [
    ("humaneval_check", "def add(a, b):\n    return a + b\n",
     ["def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n\ncheck(add)"]),
    ("class_and_state", "class Solution:\n    def twoSum(self, xs, t):\n"
                        "        seen = {}\n        for i, x in enumerate(xs):\n"
                        "            if t - x in seen:\n                return [seen[t - x], i]\n"
                        "            seen[x] = i\n"
                        "class Stack:\n    def __init__(self):\n        self.items = []\n"
                        "    def push(self, x):\n        self.items.append(x)\n"
                        "    def pop(self):\n        return self.items.pop()\n",
     ["assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]",
      "s = Stack()\ns.push(1)\ns.push(2)\nassert s.pop() == 2 and s.items == [1]\nassert len(s.items) == 1"]),
    ("generators_and_iteration", "def evens(n):\n    for i in range(n):\n        if i % 2 == 0:\n            yield i\n",
     ["assert list(evens(7)) == [0, 2, 4, 6]", "assert sum(evens(5)) == 6", "g = evens(3)\nassert next(g) == 0",
      "assert 4 in evens(5)"]),
    ("exceptions_the_tests_expect", "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n"
                                    "    return x ** 0.5\n",
     ["try:\n    root(-1)\nexcept ValueError as e:\n    assert 'negative' in str(e)\nelse:\n    assert False",
      "assert root(4) == 2.0"]),
    ("modules_the_program_imported", "import math\nfrom math import isclose\ndef area(r):\n    return math.pi * r * r\n",
     ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)", "assert isclose(area(1), math.pi)",
      "assert abs(area(1) - 3.14159) < 1e-4"]),
    ("subclasses_of_plain_types", "import collections, enum\nP = collections.namedtuple('P', 'x y')\n"
                                  "class C(enum.IntEnum):\n    RED = 1\n"
                                  "def f():\n    return P(1, 2)\ndef g():\n    return C.RED\n"
                                  "def h():\n    return collections.Counter('aab')\n"
                                  "def k():\n    return collections.OrderedDict(a=1)\n",
     ["assert f() == (1, 2)", "assert g() == 1", "assert h() == {'a': 2, 'b': 1}", "assert k() == {'a': 1}"]),
    ("plain_types_round_trip", "def f():\n    return [(1, 2.5), {'k': {1, 2}}, frozenset([3]), b'x', 1+2j, None, "
                               "True, float('inf'), {(1, 2): 'a'}]\n"
                               "def big():\n    return 7 ** 10000\nLIMIT = [1, 2]\n",
     ["assert f() == [(1, 2.5), {'k': {1, 2}}, frozenset([3]), b'x', 1+2j, None, True, float('inf'), {(1, 2): 'a'}]",
      "assert big() == 7 ** 10000", "assert f()[0] != [1, 2.5]  # a tuple stays a tuple", "assert LIMIT == [1, 2]",
      "assert type(f()[6]) is bool and isinstance(f()[1], dict)"]),
    ("tests_share_names", "def double(x):\n    return 2 * x\n",
     ["import math\nx = double(3)", "assert x == 6 and math.floor(2.5) == 2", "assert [double(i) for i in range(3)] == [0, 2, 4]",
      "assert sorted([double(3), double(1)], key=lambda v: -v) == [6, 2]"]),
    ("closures_and_str", "def make_adder(n):\n    return lambda x: x + n\n"
                         "class P:\n    def __str__(self):\n        return 'P!'\n",
     ["assert make_adder(2)(3) == 5", "assert str(P()) == 'P!'", "assert f'{P()}' == 'P!'"]),
    ("multiprocessing_in_the_program", "import multiprocessing as mp\ndef sq(x):\n    return x * x\n"
                                       "def total(n):\n    with mp.get_context('fork').Pool(2) as p:\n"
                                       "        return sum(p.map(sq, range(n)))\n",
     ["assert total(4) == 14"]),
]


@needs_sandbox
@pytest.mark.parametrize("name, program, tests", LEGIT, ids=[x[0] for x in LEGIT])
def test_supported_test_forms_pass(name, program, tests):
    res = _score(f"```python\n{program}```", tests, limits=SandboxLimits(wall_s=10))
    assert res.score == 1.0, res


@needs_sandbox
def test_non_plain_results_fail_with_a_clear_reason():
    program = "```python\nclass Box:\n    pass\ndef f():\n    return Box()\n```"
    res = _score(program, ["assert f()", "assert f() == 1"])
    assert res.score == 0.0
    assert "not plain data" in res.reason


@needs_sandbox
def test_numpy_values_are_converted_to_plain_data():
    program = "```python\nimport numpy as np\ndef f(xs):\n    return np.array(xs) * 2\ndef g(xs):\n    return np.sum(xs)\n```"
    tests = ["assert list(f([1, 2])) == [2, 4]", "assert g([1, 2]) == 3", "assert f([1]).tolist() == [2]"]
    res = _score(program, tests, site_packages=True)
    assert res.score == pytest.approx(2 / 3), res  # a method of the array is a plain list's: not the program's
