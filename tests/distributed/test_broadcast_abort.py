"""Fail-fast broadcast weight sync without Ray or vLLM (creditrl/weights/broadcast.py): a receiver whose load
fails, or a member that never joins, ends the sync for everyone in seconds although the group timeout is
minutes; the manifest survives a pickle-free (msgpack-like) channel."""

from __future__ import annotations

import json
import time

import torch
import torch.multiprocessing as mp

from creditrl.weights.broadcast import (SyncAborted, TensorMeta, abort_group, make_group, make_store,
                                        manifest_from_wire, manifest_to_wire)

GROUP_TIMEOUT_S = 300  # what a member would wait without the abort


def _buckets():
    g = torch.Generator().manual_seed(0)
    return [{f"w{k}": torch.randn(256, 64, generator=g)} for k in range(4)]


def _manifest(buckets):
    return [tuple(TensorMeta(n, tuple(t.shape), t.dtype) for n, t in b.items()) for b in buckets]


def _member(rank: int, port: int, prefix: str, fail_on: int, queue) -> None:
    """rank 0 sends 4 buckets; rank `fail_on` fails to load bucket 1; reports (rank, error type, seconds)."""
    from creditrl.weights.broadcast import receive_into, send_buckets

    torch.set_num_threads(1)
    buckets = _buckets()
    store = make_store("127.0.0.1", GROUP_TIMEOUT_S, port=port, is_host=False)
    start, group = time.monotonic(), None
    try:
        group = make_group("gloo", store, prefix, rank, 3, GROUP_TIMEOUT_S)
        if rank == 0:
            send_buckets(group, iter(buckets), _manifest(buckets), torch.device("cpu"))
        else:
            loaded = []

            def load(bucket):
                if rank == fail_on and len(loaded) == 1:
                    raise KeyError("no parameter named 'w1' in this engine")
                loaded.append(bucket)

            receive_into(group, _manifest(buckets), torch.device("cpu"), load)
        queue.put((rank, None, time.monotonic() - start))
    except Exception as exc:
        t0 = time.monotonic()
        group = None  # dropping an aborted group must not block its owner until the timeout
        queue.put((rank, type(exc).__name__, time.monotonic() - start, str(exc), time.monotonic() - t0))


def _run(prefix: str, fail_on: int, ranks=(0, 1, 2), abort_after_s: float | None = None) -> dict:
    host = make_store("127.0.0.1", GROUP_TIMEOUT_S)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(r, host.port, prefix, fail_on, queue)) for r in ranks]
    for p in procs:
        p.start()
    if abort_after_s is not None:
        time.sleep(abort_after_s)
        abort_group("127.0.0.1", host.port, prefix, "rollout actor 2 died before joining")
    results = {}
    for _ in ranks:
        item = queue.get(timeout=90)
        results[item[0]] = item[1:]
    for p in procs:
        p.join(timeout=60)
    return results


def test_a_receiver_that_fails_mid_sync_aborts_the_sender_and_the_other_receiver():
    results = _run("abort-load", fail_on=2)
    err, seconds, message, del_s = results[2]
    assert err == "KeyError" and seconds < 30
    err, seconds, message, del_s = results[0]  # the sender stops at once, with the failing rank's reason
    assert err == "SyncAborted" and "rank 2: KeyError" in message and "no parameter named 'w1'" in message
    assert seconds < 30 and del_s < 5
    # the healthy receiver either got every bucket before the abort (gloo sends to each receiver on its own)
    # or stops with the same reason; it never waits for the group timeout
    err, seconds = results[1][:2]
    assert err in (None, "SyncAborted") and seconds < 30
    if err is not None:
        assert "rank 2: KeyError" in results[1][2]


def test_a_member_that_never_joins_is_aborted_by_the_controller():
    results = _run("abort-join", fail_on=-1, ranks=(0, 1), abort_after_s=2.0)  # rank 2 never starts
    for rank in (0, 1):
        err, seconds, message, _ = results[rank]
        assert err == "SyncAborted" and "controller: rollout actor 2 died before joining" in message
        assert seconds < 30


def test_manifest_wire_format_is_plain_data_and_round_trips():
    manifest = [(TensorMeta("a", (3, 5), torch.float32), TensorMeta("b", (7,), torch.bfloat16)),
                (TensorMeta("c", (), torch.int64),)]
    wire = manifest_to_wire(manifest)
    assert json.loads(json.dumps(wire)) == wire  # only lists, strings and numbers
    assert manifest_from_wire(wire) == manifest
    try:
        manifest_from_wire([[["a", [1], "Tensor"]]])
    except ValueError as exc:
        assert "unknown dtype 'Tensor'" in str(exc)
    else:
        raise AssertionError("an unknown dtype was accepted")


def test_sync_aborted_is_a_runtime_error():
    assert issubclass(SyncAborted, RuntimeError)
