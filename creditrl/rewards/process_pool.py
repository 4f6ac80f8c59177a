"""A pool of reward worker processes with hard per-sample timeouts and results streamed as samples finish.

Workers are started with `spawn` (never `fork`: the trainer process has torch threads) and rebuild the reward
functions from their `PartSpec`s, so user-defined functions loaded from a file work without pickling them.
Each worker runs one sample at a time and reports each as it ends. Samples are sent ahead in chunks (a worker's
pipe holds its next samples, so it never waits for the pool between samples: ~4x less overhead per sample on a
busy core than one round trip each); the pool knows which sample a worker is on, the oldest unreported one.
A sample that runs past `timeout_s + grace_s` (grace: `default_grace`, at most 5 s) gets its worker killed
(the worker's whole process group; sandboxes it started die with it through PR_SET_PDEATHSIG) and replaced;
its results are failures with a "timeout" reason, and the samples queued behind it go to the next worker. A
worker that dies (e.g. a segfault in a C extension) is replaced the same way. `concurrent.futures.ProcessPoolExecutor` can not do either: it can not kill one task.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Iterator

from creditrl.rewards.base import REWARDS, RewardConfigError, RewardSample, WeightedReward
from creditrl.rewards.executor import SampleResults, default_grace, failed_results, score_sample

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 120.0  # a worker must import and build its rewards within this


def worker_payload(rewards: list[WeightedReward]) -> list[tuple[str, float, Any]]:
    """What a worker needs to rebuild `rewards`: (name, weight, spec), or the pickled function if no spec."""
    out = []
    for r in rewards:
        if r.spec is not None:
            out.append((r.name, r.weight, r.spec))
            continue
        try:
            out.append((r.name, r.weight, pickle.dumps(r.fn)))
        except Exception as e:  # noqa: BLE001
            raise RewardConfigError(
                f"reward '{r.name}' can not be sent to a worker process: it was not built by build_rewards() "
                f"(no spec) and its function can not be pickled ({type(e).__name__}: {e}). "
                "Build it with build_rewards() or use reward.executor: serial.") from None
    return out


def rebuild_rewards(payload: list[tuple[str, float, Any]]) -> list[WeightedReward]:
    out = []
    for name, weight, spec in payload:
        fn = pickle.loads(spec) if isinstance(spec, bytes) else REWARDS.build(spec.name, spec.options)
        out.append(WeightedReward(name, weight, fn, None if isinstance(spec, bytes) else spec))
    return out


def _worker_main(conn: Connection, payload: list, timeout_s: float | None) -> None:
    """Worker loop: build the rewards, then score samples until the pool sends None or goes away."""
    os.setsid()  # own process group: the pool kills the group on timeout
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import creditrl.rewards  # noqa: F401  (registers every reward)

        rewards = rebuild_rewards(payload)
    except BaseException as e:  # noqa: BLE001
        conn.send(("init_error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        for index, payload in task:  # a chunk of (index, pickled sample), reported one by one
            conn.send((index, score_sample(rewards, pickle.loads(payload), timeout_s)))


CHUNKS_PER_WORKER = 4  # a batch goes out in about this many chunks per worker (balance vs. overhead)


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process
    conn: Connection
    tasks: deque = field(default_factory=deque)  # indices sent and not reported, in run order: [0] is running
    deadline: float = 0.0  # when the running sample's time is up (it started when the previous one reported)


class RewardProcessPool:
    """`workers` processes scoring samples concurrently (see module docstring)."""

    def __init__(self, rewards: list[WeightedReward], workers: int, timeout_s: float | None,
                 grace_s: float | None = None):
        if workers < 1:
            raise ValueError(f"reward.workers must be >= 1 for the process executor, got {workers}")
        self.rewards = rewards
        self.n_workers = workers
        self.timeout_s = timeout_s
        grace_s = default_grace(timeout_s) if grace_s is None else grace_s
        self.hard_timeout_s = None if timeout_s is None else timeout_s + grace_s
        self._payload = worker_payload(rewards)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []

    # -- worker lifecycle ------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self._payload, self.timeout_s), daemon=True,
                                 name="creditrl-reward-worker")
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _await_ready(self, w: _Worker) -> None:
        if not w.conn.poll(_READY_TIMEOUT_S):
            self._kill(w)
            raise RuntimeError(f"a reward worker did not start within {_READY_TIMEOUT_S:g}s")
        try:
            kind, msg = w.conn.recv()
        except EOFError:
            raise RuntimeError(f"a reward worker died while starting (exit code {w.proc.exitcode})") from None
        if kind == "init_error":
            self.close()
            raise RewardConfigError(f"a reward worker could not build the reward functions: {msg}")

    def start(self) -> None:
        """Start the workers (also done by the first `map_unordered`); errors of the reward options surface here."""
        new = [self._spawn() for _ in range(self.n_workers - len(self._workers))]
        self._workers += new
        for w in new:
            self._await_ready(w)
        if new:
            log.info("started %d reward worker process(es)", len(new))

    def _kill(self, w: _Worker) -> None:
        """SIGKILL the worker and its process group, then reap it (a dead, unreaped worker is fine)."""
        w.proc.kill()
        try:
            os.killpg(w.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        w.proc.join(timeout=5)
        w.conn.close()

    def _replace(self, w: _Worker) -> None:
        self._kill(w)
        self._respawn(w)

    def _respawn(self, w: _Worker) -> None:
        fresh = self._spawn()
        self._await_ready(fresh)
        w.proc, w.conn, w.tasks = fresh.proc, fresh.conn, deque()

    # -- scoring ---------------------------------------------------------------------------------------------
    def map_unordered(self, samples: list[RewardSample]) -> Iterator[SampleResults]:
        self.start()
        todo = deque(range(len(samples)))
        chunk = max(1, len(samples) // (self.n_workers * CHUNKS_PER_WORKER))
        try:
            while todo or any(w.tasks for w in self._workers):
                for w in self._workers:
                    if w.tasks or not todo:
                        continue
                    sent: list[tuple[int, bytes]] = []
                    while todo and len(sent) < chunk:
                        i = todo.popleft()
                        try:
                            sent.append((i, pickle.dumps(samples[i])))
                        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable object in sample.meta
                            yield i, failed_results(self.rewards, samples[i], f"could not send the sample to a "
                                                    f"worker: {type(e).__name__}: {e}")
                    if not sent:
                        continue
                    try:
                        w.conn.send(sent)
                    except (BrokenPipeError, ConnectionResetError, EOFError):  # the idle worker died
                        self._replace(w)
                        todo.extendleft(reversed([i for i, _ in sent]))
                        continue
                    w.tasks.extend(i for i, _ in sent)
                    w.deadline = time.monotonic() + (self.hard_timeout_s or 0.0)
                busy = [w for w in self._workers if w.tasks]
                if not busy:
                    continue
                wait_s = None
                if self.hard_timeout_s is not None:
                    wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = wait([w.conn for w in busy], wait_s)
                for w in busy:
                    if w.conn in ready:
                        yield from self._collect(w, samples, todo)
                    elif self.hard_timeout_s is not None and time.monotonic() >= w.deadline:
                        i = w.tasks[0]
                        log.warning("reward worker still busy on sample %s after %.3gs: killing it",
                                    samples[i].sample_id, self.hard_timeout_s)
                        yield i, self._fail_running(w, todo, samples,
                                                    f"timeout: worker killed after {self.hard_timeout_s:g}s")
        finally:
            for w in self._workers:  # the consumer stopped early: abandon what is still running
                if w.tasks:
                    self._replace(w)

    def _collect(self, w: _Worker, samples: list[RewardSample], todo: deque) -> Iterator[SampleResults]:
        """Every report waiting in a ready worker's pipe; a dead worker fails its running sample."""
        while w.tasks:
            try:
                if not w.conn.poll():
                    return
                index, results = w.conn.recv()
            except (EOFError, OSError):
                self._kill(w)  # before anything reaps it: its pid is its process group id
                code = w.proc.exitcode
                i = w.tasks[0]
                log.warning("reward worker died (exit code %s) on sample %s; starting a new one",
                            code, samples[i].sample_id)
                yield i, self._fail_running(w, todo, samples, f"reward worker died (exit code {code})", kill=False)
                return
            w.tasks.popleft()  # reports come in run order: this is `index`
            w.deadline = time.monotonic() + (self.hard_timeout_s or 0.0)  # the next sample starts now
            yield index, results

    def _fail_running(self, w: _Worker, todo: deque, samples: list[RewardSample], why: str,
                      kill: bool = True) -> list:
        """Replace the worker; its running sample fails with `why`, the samples queued behind it go back to `todo`."""
        running, queued = w.tasks[0], list(w.tasks)[1:]
        if kill:
            self._replace(w)
        else:  # already killed and reaped by the caller
            self._respawn(w)
        todo.extendleft(reversed(queued))
        return failed_results(self.rewards, samples[running], why)

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                self._kill(w)
            else:
                w.conn.close()
        self._workers = []
