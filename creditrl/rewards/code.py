"""Code reward: run the model's Python program against test cases in the sandbox (sandbox.py).

The program is the last fenced code block of the response (```python ... ``` or a bare ``` block). The tests
come from `sample.meta["tests"]` if present, else from the dataset answer parsed as JSON, in one of two forms:

- assert tests (MBPP / HumanEval style): a list of Python statements, e.g.
  `["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]`, run by a judge process that the program can not reach;
  the names a test takes from the program are remote references that return plain values (see
  sandbox_child.py), so comparisons never use the program's own `__eq__`, builtins or modules;
- stdio tests (APPS / CodeContests style): a list of `{"input": ..., "output": ...}`; the program runs once per
  test with `input` on stdin, and its stdout must equal `output` (trailing whitespace on each line and trailing
  blank lines ignored). Outputs are compared here, outside the sandbox.

    pass_rate:       score = passed / n_tests
    all_or_nothing:  score = 1 if every test passed else 0

A program that times out, crashes, exceeds the output cap or (by default) leaves a background process running
scores 0 with that as the reason. Those are outcomes of the program, not failures of the reward function;
only a sandbox that can not be built counts as a failure. Building this reward checks, once, that the sandbox
works on this machine and refuses to start otherwise.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass, field
from typing import Literal

from creditrl.rewards.base import REWARDS, RewardConfigError, RewardResult, RewardSample
from creditrl.rewards.sandbox import SandboxLimits, SandboxResult, run_in_sandbox, sandbox_unavailable_reason

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_SIGNAL_NOTES = {signal.SIGXCPU: " (CPU time limit)", signal.SIGXFSZ: " (file size limit)",
                 signal.SIGKILL: "", signal.SIGSEGV: " (crash)"}


def extract_code(response: str) -> str | None:
    """The last fenced code block of `response`, or None."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else None


@dataclass
class CodeTests:
    mode: Literal["asserts", "stdio"]
    inputs: list[str]  # assert statements, or stdin texts
    expected: list[str] | None = None  # stdout per test (stdio mode)


def parse_tests(raw: object) -> CodeTests:
    """Tests from a JSON string or an already-decoded list (see module docstring)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"the code tests are not valid JSON ({e}); expected a list of assert statements "
                             "or of {\"input\", \"output\"} objects") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"the code tests must be a non-empty list, got {type(raw).__name__}")
    if all(isinstance(t, str) for t in raw):
        return CodeTests("asserts", list(raw))
    if all(isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
           for t in raw):
        return CodeTests("stdio", [t["input"] for t in raw], [t["output"] for t in raw])
    raise ValueError("each code test must be an assert statement (string) or an object with string "
                     "'input' and 'output'; do not mix the two")


def normalize_output(text: str) -> str:
    """Trailing whitespace of each line and trailing blank lines do not count."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name + _SIGNAL_NOTES.get(sig, "")
    except ValueError:
        return f"signal {sig}"


def _outcomes(res: SandboxResult, tests: CodeTests) -> list[tuple[bool, str]]:
    """(passed, error) per test; tests without a report (the run stopped early) did not pass."""
    out: list[tuple[bool, str]] = [(False, "not run")] * len(tests.inputs)
    for rec in res.records:
        i = rec.get("test")
        if not isinstance(i, int) or not 0 <= i < len(out) or out[i][1] != "not run":
            continue  # first report of each test wins
        if tests.mode == "asserts":
            out[i] = (bool(rec.get("ok")), rec.get("error", ""))
        elif rec.get("timeout"):
            out[i] = (False, "timeout")
        elif rec.get("signal"):
            out[i] = (False, f"killed by {_signal_name(rec['signal'])}")
        elif rec.get("exit") != 0:
            out[i] = (False, f"exit code {rec.get('exit')}")
        else:
            ok = normalize_output(rec.get("stdout", "")) == normalize_output(tests.expected[i])
            out[i] = (ok, "" if ok else "wrong output")
    return out


def _run_problem(res: SandboxResult, limits: SandboxLimits, penalize_strays: bool) -> str:
    """Why the whole run scores 0 (timeout, crash, ...), or "" if the per-test results count."""
    if res.timed_out:
        return f"timeout after {limits.wall_s:g}s"
    if res.output_exceeded:
        return f"output over {limits.output_bytes} bytes"
    if res.signal:
        return f"killed by {_signal_name(res.signal)}"
    if penalize_strays and res.stray_processes:
        return f"left {res.stray_processes} background process(es) running"
    program_error = next((r["program_error"] for r in res.records if "program_error" in r), None)
    if program_error:
        return f"program raised {program_error}"
    if any(r.get("program_exited") for r in res.records):
        return "the program exited before its tests ran"
    if res.exit_code not in (0, None):
        return f"program exit code {res.exit_code}: {res.output_tail[-200:]}"
    return ""


@dataclass
class CodeTestsConfig:
    scoring: Literal["pass_rate", "all_or_nothing"] = "pass_rate"  # passed / n_tests, or 1 only if all pass
    limits: SandboxLimits = field(default_factory=SandboxLimits)  # sandbox limits of one run (see sandbox.py)
    site_packages: bool = False  # let the program import this environment's packages (numpy, ...)
    require_code_block: bool = True  # False: with no fenced block, run the whole response
    penalize_strays: bool = True  # score 0 if the program leaves a background process running


@REWARDS.register("code_tests", CodeTestsConfig)
def code_tests(cfg: CodeTestsConfig):
    """Pass rate (or all-or-nothing) of the response's Python program on the sample's tests, sandboxed."""
    reason = sandbox_unavailable_reason()
    if reason is not None:
        raise RewardConfigError(f"reward 'code_tests' refuses to run model-written code: {reason}.")

    def score(sample: RewardSample) -> RewardResult:
        program = extract_code(sample.response)
        if program is None:
            if cfg.require_code_block:
                return RewardResult(0.0, "no code block found")
            program = sample.response
        tests = parse_tests(sample.meta.get("tests", sample.answer))
        res = run_in_sandbox(program, tests.inputs, tests.mode, cfg.limits, cfg.site_packages)
        if res.setup_error:
            return RewardResult(0.0, f"sandbox error: {res.setup_error}", failed=True)
        problem = _run_problem(res, cfg.limits, cfg.penalize_strays)
        if problem:
            return RewardResult(0.0, problem)
        outcomes = _outcomes(res, tests)
        passed = sum(ok for ok, _ in outcomes)
        n = len(outcomes)
        value = passed / n if cfg.scoring == "pass_rate" else float(passed == n)
        if passed == n:
            return RewardResult(value)
        first = next(err for ok, err in outcomes if not ok)
        return RewardResult(value, f"{passed}/{n} tests passed; first failure: {first}"[:300])

    return score
