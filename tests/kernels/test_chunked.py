"""Chunked torch backend: values and gradients against the float64 naive reference, dtypes, masking, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.kernels import LpRegProxy, linear_token_stats

from .helpers import ALL_WANT, DIFF_FLOAT_OUTPUTS, make_inputs, random_upstream, rel_err

LP_REG_CASES = {
    "none": None,
    "minp": LpRegProxy(threshold=0.1),
    "minp_tq": LpRegProxy(threshold=0.05, threshold_temperature=1.0, proxy_temperature=0.8),
    "fixed": LpRegProxy(threshold=0.01, rule="fixed", threshold_temperature=1.3),
    "soft": LpRegProxy(threshold=0.1, soft=True),
}


def _run(backend, inp, *, temperature=1.0, lp_reg=None, chunk_size=None, want=ALL_WANT, **kw):
    return linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], temperature=temperature, want=want,
                              lp_reg=lp_reg, ref=inp.get("ref"), backend=backend, chunk_size=chunk_size, **kw)


def _assert_stats_close(got, ref, rtol, atol):
    for name, expected in ref.as_dict().items():
        actual = getattr(got, name)
        assert actual is not None, name
        if not expected.is_floating_point():
            assert torch.equal(actual, expected), name
            continue
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(actual)), name
        torch.testing.assert_close(actual[finite].double(), expected[finite].double(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")
        assert torch.equal(actual[~finite], expected[~finite]), name


@pytest.mark.parametrize("lp_case", list(LP_REG_CASES))
@pytest.mark.parametrize("temperature,chunk", [(1.0, 1), (0.7, 4), (1.3, None)])
def test_values_and_grads_match_naive_float64(lp_case, temperature, chunk):
    lp = LP_REG_CASES[lp_case]
    inp = make_inputs(13, 6, 97, seed=7, scale=1.5, ref=True, ignore=(2, 9))
    inp["targets"][3:7] = (inp["hidden"] @ inp["weight"].T).detach()[3:7].argmax(-1)  # inside the keep set
    got = _run("chunked", inp, temperature=temperature, lp_reg=lp, chunk_size=chunk)
    ref = _run("naive", inp, temperature=temperature, lp_reg=lp)
    if lp is not None:
        assert ref.target_in_proxy.any() and not ref.target_in_proxy.all()
    _assert_stats_close(got, ref, rtol=1e-10, atol=1e-10)
    grads = [torch.autograd.grad(random_upstream(s, DIFF_FLOAT_OUTPUTS, 13), (inp["hidden"], inp["weight"]))
             for s in (got, ref)]
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("proxy_temperature", [None, 0.9])
def test_gradcheck_all_outputs(proxy_temperature):
    """Finite differences of every differentiable output. proxy_kl detaches q (kernels.md §6.2), which equals
    the true derivative only when T_q = T (then KL(q || p) = -log Z_K is stationary in q), so it is checked there."""
    inp = make_inputs(5, 4, 11, seed=2, ref=True)
    inp["targets"][:2] = (inp["hidden"] @ inp["weight"].T).detach()[:2].argmax(-1)  # inside the keep set
    lp = LpRegProxy(threshold=0.2, proxy_temperature=proxy_temperature)

    def fn(hidden, weight):
        s = linear_token_stats(hidden, weight, inp["targets"], temperature=0.8, want=ALL_WANT, lp_reg=lp,
                               ref=inp["ref"], backend="chunked", chunk_size=2)
        pl = torch.where(s.target_in_proxy, s.proxy_logp, torch.zeros_like(s.proxy_logp))
        out = (s.logp, s.entropy, s.lse, s.sum_p2, s.sum_p2_z, s.proxy_log_mass, pl, s.ref_kl)
        return out + ((s.proxy_kl,) if proxy_temperature is None else ())

    assert torch.autograd.gradcheck(fn, (inp["hidden"], inp["weight"]), eps=1e-6, atol=1e-7, fast_mode=True)


def test_odd_vocab_chunks_and_large_rows():
    inp = make_inputs(70, 8, 1000, seed=11, scale=2.0, ignore=(0, 33, 69))
    got = _run("chunked", inp, chunk_size=16, want=("logp", "entropy", "sum_p2"))
    ref = _run("naive", inp, want=("logp", "entropy", "sum_p2"))
    _assert_stats_close(got, ref, rtol=1e-10, atol=1e-10)


def test_fp32_inputs_against_float64_reference():
    inp = make_inputs(33, 16, 257, seed=4, dtype=torch.float32, scale=1.0, ref=True, ignore=(5,))
    inp64 = {k: (v.detach().double().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v)
             for k, v in inp.items()}
    inp64["ref"] = tuple(t.double() for t in inp["ref"])
    lp = LpRegProxy(threshold=0.05)
    got = _run("chunked", inp, temperature=0.7, lp_reg=lp, chunk_size=8)
    ref = _run("naive", inp64, temperature=0.7, lp_reg=lp)
    assert got.logp.dtype == torch.float32
    _assert_stats_close(got, ref, rtol=1e-5, atol=2e-5)
    gg = torch.autograd.grad(random_upstream(got, DIFF_FLOAT_OUTPUTS, 33), (inp["hidden"], inp["weight"]))
    gr = torch.autograd.grad(random_upstream(ref, DIFF_FLOAT_OUTPUTS, 33), (inp64["hidden"], inp64["weight"]))
    for g, r in zip(gg, gr):
        assert g.dtype == torch.float32
        assert rel_err(g, r) < 1e-5


def test_bf16_inputs_fp32_outputs_and_grad_dtypes():
    """kernels.md §10: bf16 inputs against float64 computed from the bf16-rounded inputs."""
    inp = make_inputs(24, 32, 301, seed=8, dtype=torch.bfloat16)
    got = _run("chunked", inp, temperature=0.7, want=("logp", "entropy"), chunk_size=5)
    h64 = inp["hidden"].detach().double().requires_grad_()
    w64 = inp["weight"].detach().double().requires_grad_()
    ref = linear_token_stats(h64, w64, inp["targets"], temperature=0.7, backend="naive")
    assert got.logp.dtype == torch.float32 and got.entropy.dtype == torch.float32
    torch.testing.assert_close(got.logp.double(), ref.logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.entropy.double(), ref.entropy, rtol=1e-5, atol=1e-4)
    gh, gw = torch.autograd.grad((got.logp + 0.3 * got.entropy).sum(), (inp["hidden"], inp["weight"]))
    rh, rw = torch.autograd.grad((ref.logp + 0.3 * ref.entropy).sum(), (h64, w64))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    assert rel_err(gh, rh) < 1e-2 and rel_err(gw, rw) < 1e-2


def test_mixed_dtypes_under_cpu_autocast():
    """bf16 hidden with an fp32 master weight, called under CPU autocast (the learner's configuration)."""
    inp = make_inputs(16, 24, 130, seed=9, dtype=torch.float32)
    h_bf16 = inp["hidden"].detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_token_stats(h_bf16, inp["weight"], inp["targets"], backend="chunked")
    h64 = h_bf16.detach().double().requires_grad_()
    w64 = inp["weight"].detach().double().requires_grad_()
    ref = linear_token_stats(h64, w64, inp["targets"], backend="naive")
    assert got.logp.dtype == torch.float32
    torch.testing.assert_close(got.logp.double(), ref.logp, rtol=1e-5, atol=1e-5)
    gh, gw = torch.autograd.grad(got.logp.sum(), (h_bf16, inp["weight"]))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.float32
    rh, rw = torch.autograd.grad(ref.logp.sum(), (h64, w64))
    assert rel_err(gw, rw) < 1e-5 and rel_err(gh, rh) < 1e-2


@pytest.mark.parametrize("backend", ["chunked", "naive"])
def test_no_grad_forward_is_bitwise_identical(backend):
    inp = make_inputs(40, 16, 211, seed=12, dtype=torch.float32, ref=True)
    lp = LpRegProxy(threshold=0.05)
    with_grad = _run(backend, inp, lp_reg=lp, temperature=0.9)
    with torch.no_grad():
        without = _run(backend, inp, lp_reg=lp, temperature=0.9)
    for name, value in with_grad.as_dict().items():
        assert torch.equal(value.detach(), getattr(without, name)), name


def test_ignored_rows_are_zero_and_do_not_touch_weight_grad():
    inp = make_inputs(12, 8, 53, seed=13, dtype=torch.float64, ignore=(1, 4, 11), ref=True)
    lp = LpRegProxy(threshold=0.1)
    stats = _run("chunked", inp, lp_reg=lp, chunk_size=5)
    ignored = inp["targets"] == -100
    for name, value in stats.as_dict().items():
        assert not value[ignored].any(), name
    gh, gw = torch.autograd.grad(random_upstream(stats, DIFF_FLOAT_OUTPUTS, 12), (inp["hidden"], inp["weight"]))
    assert not gh[ignored].any()
    keep = ~ignored
    sub = {"hidden": inp["hidden"].detach()[keep].requires_grad_(), "weight": inp["weight"],
           "targets": inp["targets"][keep], "ref": (inp["ref"][0][keep], inp["ref"][1])}
    sub_stats = _run("chunked", sub, lp_reg=lp, chunk_size=5)
    coefs = torch.Generator().manual_seed(1)
    # same upstream coefficients on the kept rows: rebuild them in the same order as random_upstream
    full_coefs = [torch.randn(12, generator=coefs, dtype=torch.float64) for _ in DIFF_FLOAT_OUTPUTS]
    total = 0.0
    names = [n for n in DIFF_FLOAT_OUTPUTS if getattr(stats, n) is not None]
    for name, c in zip(names, full_coefs):
        total = total + (getattr(sub_stats, name) * c[keep]).sum()
    pl = sub_stats.proxy_logp
    total = total + 0.7 * torch.where(torch.isfinite(pl), pl, torch.zeros_like(pl)).sum()
    (sub_gw,) = torch.autograd.grad(total, sub["weight"])
    torch.testing.assert_close(gw, sub_gw, rtol=1e-12, atol=1e-12)


def test_all_rows_ignored_gives_zeros_and_zero_grads():
    inp = make_inputs(4, 3, 10, seed=1)
    targets = torch.full((4,), -100)
    stats = linear_token_stats(inp["hidden"], inp["weight"], targets, backend="chunked")
    assert not stats.logp.any() and not stats.entropy.any()
    gh, gw = torch.autograd.grad(stats.logp.sum() + stats.entropy.sum(), (inp["hidden"], inp["weight"]))
    assert not gh.any() and not gw.any()


def test_empty_input():
    h = torch.zeros(0, 4, requires_grad=True)
    w = torch.randn(7, 4, requires_grad=True)
    stats = linear_token_stats(h, w, torch.zeros(0, dtype=torch.long), backend="chunked")
    assert stats.logp.shape == (0,) and stats.entropy.shape == (0,)


def _shifted_inputs(shift: float, sharp: float = 1.0):
    """Logits = sharp * (hidden @ W.T) + shift via an extra constant hidden column."""
    inp = make_inputs(6, 5, 37, seed=21, dtype=torch.float64)
    h = torch.cat([inp["hidden"].detach() * sharp, torch.ones(6, 1, dtype=torch.float64)], 1).requires_grad_()
    w = torch.cat([inp["weight"].detach(), torch.full((37, 1), shift, dtype=torch.float64)], 1).requires_grad_()
    return {"hidden": h, "weight": w, "targets": inp["targets"]}


@pytest.mark.parametrize("shift,sharp", [(1e3, 1.0), (-1e3, 1.0), (0.0, 40.0)])
def test_shifted_and_peaked_rows(shift, sharp):
    inp = _shifted_inputs(shift, sharp)
    got = _run("chunked", inp, want=("logp", "entropy", "sum_p2"), lp_reg=LpRegProxy(threshold=0.02))
    ref = _run("naive", inp, want=("logp", "entropy", "sum_p2"), lp_reg=LpRegProxy(threshold=0.02))
    _assert_stats_close(got, ref, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(got.entropy).all()
    if shift != 0.0:  # shift invariance of the shift-free statistics
        base = _run("chunked", _shifted_inputs(0.0), want=("logp", "entropy", "sum_p2"))
        for name in ("logp", "entropy", "sum_p2"):
            torch.testing.assert_close(getattr(got, name), getattr(base, name), rtol=1e-9, atol=1e-9)
    g = torch.autograd.grad((got.logp + got.entropy).sum(), inp["hidden"])[0]
    assert torch.isfinite(g).all()


def test_uniform_rows_have_entropy_log_v():
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(1001, 4, dtype=torch.float64, requires_grad=True)
    stats = linear_token_stats(h, w, torch.tensor([0, 500, 1000]), backend="chunked", want=("sum_p2",))
    torch.testing.assert_close(stats.entropy, torch.full((3,), math.log(1001), dtype=torch.float64))
    torch.testing.assert_close(stats.logp, torch.full((3,), -math.log(1001), dtype=torch.float64))
    torch.testing.assert_close(stats.sum_p2, torch.full((3,), 1 / 1001, dtype=torch.float64))


def test_tied_embedding_gradients_sum():
    """Qwen2.5-0.5B/1.5B tie lm_head to the embedding: autograd sums both uses into one gradient."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(29, 6).double()
    ids = torch.tensor([1, 5, 7, 7])
    targets = torch.tensor([3, 0, 28, 5])
    hidden = torch.tanh(emb(ids))
    got = linear_token_stats(hidden, emb.weight, targets, backend="chunked")
    (got.logp.sum() + got.entropy.sum()).backward()
    g_chunked = emb.weight.grad.clone()
    emb.weight.grad = None
    hidden = torch.tanh(emb(ids))
    ref = linear_token_stats(hidden, emb.weight, targets, backend="naive")
    (ref.logp.sum() + ref.entropy.sum()).backward()
    torch.testing.assert_close(g_chunked, emb.weight.grad, rtol=1e-10, atol=1e-12)


def test_vocab_limit_masks_padded_rows():
    inp = make_inputs(8, 5, 40, seed=3)
    got = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"] % 31, vocab_limit=31, backend="chunked")
    ref = linear_token_stats(inp["hidden"], inp["weight"][:31], inp["targets"] % 31, backend="naive")
    torch.testing.assert_close(got.logp, ref.logp, rtol=1e-12, atol=1e-12)
    (gw,) = torch.autograd.grad(got.logp.sum(), inp["weight"])
    assert not gw[31:].any() and gw[:31].abs().sum() > 0


def test_default_chunk_size_is_bounded_by_workspace():
    from creditrl.kernels.chunked import LIVE_CHUNK_TENSORS, default_chunk_rows

    rows = default_chunk_rows(100_000, 32_000, torch.device("cpu"), workspace_bytes=64 * 2**20)
    assert rows * LIVE_CHUNK_TENSORS * 4 * 32_000 <= 64 * 2**20 and rows >= 1
    assert default_chunk_rows(10, 32_000, torch.device("cpu")) == 10


@pytest.mark.parametrize("backend", ["chunked", "naive"])
def test_soft_proxy_statistics_are_detached(backend):
    inp = make_inputs(4, 3, 12, seed=6)
    stats = _run(backend, inp, lp_reg=LpRegProxy(threshold=0.1, soft=True), want=("logp",))
    assert not stats.proxy_log_mass.requires_grad and not stats.proxy_logp.requires_grad
    assert stats.logp.requires_grad and stats.proxy_kl is None
