"""Broadcast weight sync without Ray: flat-bucket packing, the send/receive overlap order, and a real
3-process gloo group (sender + 2 receivers) delivering every bucket bit-exactly."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from creditrl.weights.broadcast import (TensorMeta, bucket_nbytes, make_group, make_store, pack,
                                            receive_buckets, receive_into, send_buckets, unpack)


def _bucket():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
            "i": torch.arange(4, dtype=torch.int64), "s": torch.tensor(2.5, dtype=torch.float64)}


def _meta(bucket) -> tuple[TensorMeta, ...]:
    return tuple(TensorMeta(n, tuple(t.shape), t.dtype) for n, t in bucket.items())


def test_pack_unpack_round_trip_is_bit_exact_for_mixed_dtypes():
    bucket = _bucket()
    meta = _meta(bucket)
    buf = pack(bucket, meta, torch.device("cpu"))
    assert buf.dtype == torch.uint8 and buf.numel() == bucket_nbytes(meta) == 15 * 4 + 7 * 2 + 4 * 8 + 8
    got = unpack(buf, meta)
    for n, t in bucket.items():
        assert got[n].dtype == t.dtype and got[n].shape == t.shape and torch.equal(got[n], t)
    buf.zero_()
    assert torch.equal(got["w"], bucket["w"])  # clones: the buffer can be reused


def test_pack_and_unpack_reject_a_manifest_that_does_not_match():
    bucket = _bucket()
    meta = _meta(bucket)
    wrong = (TensorMeta("w", (5, 3), torch.float32),) + meta[1:]
    with pytest.raises(ValueError, match="'w' is \\(3, 5\\) torch.float32 but the manifest says \\(5, 3\\)"):
        pack(bucket, wrong, torch.device("cpu"))
    buf = pack(bucket, meta, torch.device("cpu"))
    with pytest.raises(ValueError, match="received 114 bytes, the manifest describes 106"):
        unpack(buf, meta[:-1])


class _Work:
    def __init__(self, log, k):
        self.log, self.k = log, k

    def wait(self):
        self.log.append(f"wait{self.k}")


class _FakeGroup:
    """Records the order of broadcasts and waits (the real group is exercised by the gloo test below)."""

    def __init__(self, log):
        self.log, self.k = log, 0

    def broadcast(self, tensors, opts):
        self.log.append(f"bcast{self.k}")
        self.k += 1
        return _Work(self.log, self.k - 1)


def test_sender_prepares_next_bucket_while_previous_is_in_flight():
    log: list[str] = []
    buckets = [{"x": torch.full((2,), float(k))} for k in range(3)]
    manifest = [_meta(b) for b in buckets]

    def lazy():  # stands for the ZeRO-3 gathers: recorded when the sender asks for the next bucket
        for k, b in enumerate(buckets):
            log.append(f"gather{k}")
            yield b

    sent = send_buckets(_FakeGroup(log), lazy(), manifest, torch.device("cpu"))
    assert sent == 3 * 8
    assert log == ["gather0", "bcast0", "gather1", "wait0", "bcast1", "gather2", "wait1", "bcast2", "wait2"]


def test_receiver_posts_next_receive_before_loading_current():
    log: list[str] = []
    manifest = [(TensorMeta("x", (2,), torch.float32),)] * 3
    for k, _ in enumerate(receive_buckets(_FakeGroup(log), manifest, torch.device("cpu"))):
        log.append(f"load{k}")
    assert log == ["bcast0", "wait0", "bcast1", "load0", "wait1", "bcast2", "load1", "wait2", "load2"]


def test_sender_rejects_a_bucket_count_that_differs_from_the_manifest():
    manifest = [(TensorMeta("x", (2,), torch.float32),)] * 2
    with pytest.raises(ValueError):
        send_buckets(_FakeGroup([]), iter([{"x": torch.zeros(2)}]), manifest, torch.device("cpu"))


def _member(rank: int, world: int, port: int, manifest, buckets, queue) -> None:
    torch.set_num_threads(1)
    store = make_store("127.0.0.1", 60, port=port, is_host=False)
    group = make_group("gloo", store, "test-gen1", rank, world, 60)
    if rank == 0:
        queue.put((rank, send_buckets(group, iter(buckets), manifest, torch.device("cpu"))))
        return
    got: dict[str, torch.Tensor] = {}
    n = receive_into(group, manifest, torch.device("cpu"), got.update)
    queue.put((rank, n, got))


def test_gloo_group_delivers_every_bucket_bit_exactly_to_every_receiver():
    """Learner-rank-0 stand-in + 2 rollout stand-ins in 3 processes; the store is hosted by this process."""
    g = torch.Generator().manual_seed(1)
    buckets = [{"a": torch.randn(64, 32, generator=g), "b": torch.randn(5, generator=g).to(torch.bfloat16)},
               {"c": torch.randint(0, 100, (9,), generator=g)},
               {"d": torch.randn(3, 3, 3, generator=g).double(), "e": torch.randn(1, generator=g)}]
    manifest = [_meta(b) for b in buckets]
    host_store = make_store("127.0.0.1", 60)  # port 0: a free port, read back below
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(r, 3, host_store.port, manifest, buckets, queue)) for r in range(3)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(3):
        item = queue.get(timeout=120)
        results[item[0]] = item[1:]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    total = sum(bucket_nbytes(m) for m in manifest)
    assert results[0] == (total,)
    expected = {n: t for b in buckets for n, t in b.items()}
    for r in (1, 2):
        n, got = results[r]
        assert n == total and set(got) == set(expected)
        for name, t in expected.items():
            assert got[name].dtype == t.dtype and torch.equal(got[name], t), (r, name)


def test_make_group_rejects_unknown_backend():
    store = make_store("127.0.0.1", 5)
    with pytest.raises(ValueError, match="unknown broadcast backend 'mpi'"):
        make_group("mpi", store, "x", 0, 1, 5)
