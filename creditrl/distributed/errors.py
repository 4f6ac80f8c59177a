"""Errors of the distributed runtime, with messages that say which actor failed, where, and what to do."""

from __future__ import annotations


class WorkerFailure(RuntimeError):
    """A Ray actor of a worker group died or timed out."""


class LearnerFailure(WorkerFailure):
    """A learner rank failed: the run stops (its optimizer/ZeRO state is gone); resume from the checkpoint."""


def describe_failure(role: str, info: dict, call: str, exc: BaseException, resume_hint: str) -> str:
    where = f"{role} rank {info.get('rank', '?')} on node {info.get('node_ip', '?')} " \
            f"(host {info.get('host', '?')}, pid {info.get('pid', '?')})"
    return (f"{where} failed during {call}: {type(exc).__name__}: {exc}\n"
            f"Its logs are in the Ray session directory of that node (/tmp/ray/session_latest/logs, files "
            f"worker-*-{info.get('pid', '*')}.err/.out). {resume_hint}")
