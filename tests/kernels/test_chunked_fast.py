"""Chunked backend fast paths: fused chunk math (`fuse`) and bf16 GEMM operands (`gemm_precision`).

Each path is checked against a float64 brute-force reference (naive backend in float64). The fused math runs
eagerly in the default tests (`_FUSE_BROKEN` makes `_run_fused` call the same functions without compiling, so
the tests take milliseconds); the compiled kernels are checked by the `slow` test at the bottom.
"""

from __future__ import annotations

import pytest
import torch

from creditrl.kernels import chunked, linear_token_stats
from creditrl.kernels.dispatch import make_plan

from .helpers import make_inputs, rel_err

needs_fast_bf16 = pytest.mark.skipif(not chunked.cpu_fast_bf16(), reason="CPU without AVX512-BF16 / AMX")


@pytest.fixture
def eager_fused(monkeypatch):
    """Force the fused path for every call (threshold 0) and run its math eagerly (no compilation)."""
    monkeypatch.setattr(chunked, "FUSE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(chunked, "_FUSE_BROKEN", True)


def _to64(t):
    return t.detach().double().requires_grad_()


def _loss(stats, n, seed=3):
    g = torch.Generator().manual_seed(seed)
    cl, ce, cs = (torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3))
    total = 0.0
    for value, c in ((stats.logp, cl), (stats.entropy, ce), (stats.lse, cs)):
        total = total + (value * c.to(value.dtype)).sum()
    return total


def _check(got, ref, h, w, h64, w64, n, tol, gtol):
    for name in ("logp", "entropy", "lse"):
        torch.testing.assert_close(getattr(got, name).double(), getattr(ref, name), rtol=tol, atol=tol,
                                   msg=lambda m: f"{name}: {m}")
    gh, gw = torch.autograd.grad(_loss(got, n), (h, w))
    rh, rw = torch.autograd.grad(_loss(ref, n), (h64, w64))
    assert rel_err(gh, rh) < gtol and rel_err(gw, rw) < gtol, (rel_err(gh, rh), rel_err(gw, rw))


@pytest.mark.parametrize("temperature,chunk", [(1.0, 4), (0.7, 5), (1.3, None)])
def test_fused_math_float64_matches_naive(eager_fused, temperature, chunk):
    """The fused formulas (incl. the cancellation-free target column) are exact: float64 to 1e-10."""
    inp = make_inputs(13, 6, 97, seed=7, scale=1.5, ignore=(2, 9))
    inp["targets"][3:7] = (inp["hidden"] @ inp["weight"].T).detach()[3:7].argmax(-1)  # p_y large
    kw = dict(temperature=temperature, want=("logp", "entropy", "lse"))
    got = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="chunked", chunk_size=chunk, **kw)
    ref = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="naive", **kw)
    valid = inp["targets"] != -100
    for name in ("logp", "entropy", "lse"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-10, atol=1e-10)
        assert not getattr(got, name)[~valid].any()
    gg = torch.autograd.grad(_loss(got, 13), (inp["hidden"], inp["weight"]))
    gr = torch.autograd.grad(_loss(ref, 13), (inp["hidden"], inp["weight"]))
    for g, r in zip(gg, gr):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_fused_fp32_against_float64_peaked_rows(eager_fused):
    """fp32 inputs with p_y -> 1 rows: the fused path's gradient error stays at fp32 level."""
    inp = make_inputs(40, 16, 257, seed=4, dtype=torch.float32, scale=3.0)
    inp["targets"][:20] = (inp["hidden"] @ inp["weight"].T).detach()[:20].argmax(-1)
    h, w, y = inp["hidden"], inp["weight"], inp["targets"]
    h64, w64 = _to64(h), _to64(w)
    got = linear_token_stats(h, w, y, temperature=0.8, backend="chunked", chunk_size=7)
    ref = linear_token_stats(h64, w64, y, temperature=0.8, backend="naive")
    assert got.logp.dtype == torch.float32
    _check(got, ref, h, w, h64, w64, 40, tol=2e-5, gtol=1e-5)


def test_fused_only_for_core_plan_and_no_grad_identical(eager_fused):
    assert chunked.fusable(make_plan(("logp", "entropy"), 1.0, None, False))
    assert not chunked.fusable(make_plan(("logp", "sum_p2"), 1.0, None, False))
    assert not chunked.fusable(make_plan(("logp", "argmax"), 1.0, None, False))
    assert not chunked.fusable(make_plan(("logp",), 1.0, {"threshold": 0.1}, False))
    assert not chunked.fusable(make_plan(("logp",), 1.0, None, True))
    inp = make_inputs(21, 8, 131, seed=5, dtype=torch.float32)
    with_grad = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="chunked", chunk_size=6)
    with torch.no_grad():
        without = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="chunked", chunk_size=6)
    for name, value in with_grad.as_dict().items():
        assert torch.equal(value.detach(), getattr(without, name)), name


def test_auto_fuse_threshold_and_env(monkeypatch):
    plan = make_plan(("logp", "entropy"), 1.0, None, False)
    cpu = torch.device("cpu")
    assert not chunked.resolve_fuse(None, plan, 10, 100, cpu)
    assert chunked.resolve_fuse(None, plan, 4096, 32000, cpu)
    assert not chunked.resolve_fuse(None, plan, 4096, 32000, torch.device("cuda"))
    assert chunked.resolve_fuse(True, plan, 10, 100, cpu) and not chunked.resolve_fuse(False, plan, 4096, 32000, cpu)
    monkeypatch.setenv("CREDITRL_CHUNKED_FUSE", "0")
    assert not chunked.resolve_fuse(None, plan, 4096, 32000, cpu)


def test_gemm_precision_resolution(monkeypatch):
    f32, bf16 = torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bfloat16)
    f64 = torch.zeros(2, 2, dtype=torch.float64)
    monkeypatch.setattr(chunked, "cpu_fast_bf16", lambda: True)
    assert chunked.resolve_gemm_precision("auto", bf16, bf16) == "bf16"
    assert chunked.resolve_gemm_precision("auto", bf16, f32) == "fp32"  # fp32 master weight: no silent rounding
    assert chunked.resolve_gemm_precision("auto", f32, f32) == "fp32"
    assert chunked.resolve_gemm_precision("bf16", f32, f32) == "bf16"
    assert chunked.resolve_gemm_precision("bf16", f64, f64) == "fp32"
    with chunked._set_mkldnn_precision("bf16"):
        assert chunked.resolve_gemm_precision("auto", f32, f32) == "bf16"  # the caller's torch-wide opt-in
    monkeypatch.setattr(chunked, "cpu_fast_bf16", lambda: False)
    assert chunked.resolve_gemm_precision("auto", bf16, bf16) == "fp32"
    with pytest.raises(ValueError):
        chunked.resolve_gemm_precision("tf32", f32, f32)


def _bf16_case(n=24, h=32, v=301, seed=8):
    inp = make_inputs(n, h, v, seed=seed, dtype=torch.float32, scale=1.0)
    inp["targets"][:8] = (inp["hidden"] @ inp["weight"].T).detach()[:8].argmax(-1)
    return inp


@needs_fast_bf16
@pytest.mark.parametrize("fused", [False, True])
def test_bf16_inputs_use_bf16_gemms_exactly(monkeypatch, fused):
    """bf16 hidden and weight: logits are the exact fp32-accumulated product (fp32-level logp), dA is rounded
    to bf16 only as a GEMM operand (grads at bf16 level), the torch-wide switch is left as it was."""
    if fused:
        monkeypatch.setattr(chunked, "FUSE_MIN_ELEMENTS", 0)
        monkeypatch.setattr(chunked, "_FUSE_BROKEN", True)
    inp = _bf16_case()
    h = inp["hidden"].detach().bfloat16().requires_grad_()
    w = inp["weight"].detach().bfloat16().requires_grad_()
    y = inp["targets"]
    before = torch.backends.mkldnn.matmul.fp32_precision
    got = linear_token_stats(h, w, y, temperature=0.7, backend="chunked", chunk_size=5)
    h64, w64 = _to64(h), _to64(w)
    ref = linear_token_stats(h64, w64, y, temperature=0.7, backend="naive")
    assert got.logp.dtype == torch.float32
    _check(got, ref, h, w, h64, w64, 24, tol=2e-5, gtol=1e-2)
    assert torch.backends.mkldnn.matmul.fp32_precision == before


@needs_fast_bf16
@pytest.mark.parametrize("fused", [False, True])
def test_explicit_bf16_precision_for_fp32_inputs(monkeypatch, fused):
    """gemm_precision="bf16" with fp32 inputs == float64 on bf16-rounded operands (values at fp32 level),
    and the gradients within bf16 operand rounding of the exact float64 ones."""
    if fused:
        monkeypatch.setattr(chunked, "FUSE_MIN_ELEMENTS", 0)
        monkeypatch.setattr(chunked, "_FUSE_BROKEN", True)
    inp = _bf16_case(seed=9)
    h, w, y = inp["hidden"], inp["weight"], inp["targets"]
    plan = make_plan(("logp", "entropy"), 0.9, None, False)
    got = chunked.chunked_token_stats(h, w, y, plan, chunk_size=7, gemm_precision="bf16")
    hr, wr = _to64(h.bfloat16()), _to64(w.bfloat16())
    ref = linear_token_stats(hr, wr, y, temperature=0.9, backend="naive")
    for name in ("logp", "entropy"):
        torch.testing.assert_close(got[name].double(), getattr(ref, name), rtol=2e-5, atol=2e-5)
    loss = lambda s: (s["logp"] * 1.3 + s["entropy"] * 0.4).sum()  # noqa: E731
    gh, gw = torch.autograd.grad(loss(got), (h, w))
    h64, w64 = _to64(h), _to64(w)
    exact = linear_token_stats(h64, w64, y, temperature=0.9, backend="naive")
    rh, rw = torch.autograd.grad(loss(exact.as_dict()), (h64, w64))
    assert rel_err(gh, rh) < 1e-2 and rel_err(gw, rw) < 1e-2
    # the default for fp32 inputs stays exact fp32
    exact32 = chunked.chunked_token_stats(h, w, y, plan, chunk_size=7)
    torch.testing.assert_close(exact32["logp"].double(), exact.logp, rtol=2e-5, atol=2e-5)


@needs_fast_bf16
def test_bf16_backward_keeps_fp32_statistics(eager_fused, monkeypatch):
    """gemm_precision="bf16-backward": the statistics are bitwise those of the fp32 path, the gradients are
    within bf16 operand rounding of float64."""
    inp = _bf16_case(seed=11)
    h, w, y = inp["hidden"], inp["weight"], inp["targets"]
    plan = make_plan(("logp", "entropy"), 0.8, None, False)
    got = chunked.chunked_token_stats(h, w, y, plan, chunk_size=5, gemm_precision="bf16-backward")
    fp32 = chunked.chunked_token_stats(h, w, y, plan, chunk_size=5, gemm_precision="fp32")
    for name in ("logp", "entropy"):
        assert torch.equal(got[name].detach(), fp32[name].detach()), name
    h64, w64 = _to64(h), _to64(w)
    ref = linear_token_stats(h64, w64, y, temperature=0.8, backend="naive")
    loss = lambda s: (s["logp"] * 1.1 + s["entropy"] * 0.5).sum()  # noqa: E731
    gh, gw = torch.autograd.grad(loss(got), (h, w))
    rh, rw = torch.autograd.grad(loss(ref.as_dict()), (h64, w64))
    assert 1e-5 < rel_err(gh, rh) < 1e-2 and rel_err(gw, rw) < 1e-2  # bf16-level, not fp32-level
    monkeypatch.setattr(chunked, "DEFAULT_GEMM_PRECISION", "bf16-backward")  # the process-wide knob
    knob = chunked.chunked_token_stats(h, w, y, plan, chunk_size=5)
    assert torch.equal(torch.autograd.grad(loss(knob), h)[0], gh)
    # a plan outside the fused path keeps fp32 backward GEMMs in this mode (exact gradients)
    plan2 = make_plan(("logp", "entropy", "sum_p2"), 0.8, None, False)
    other = chunked.chunked_token_stats(h, w, y, plan2, chunk_size=5, gemm_precision="bf16-backward")
    oh = torch.autograd.grad(loss(other), h)[0]
    assert rel_err(oh, rh) < 1e-5


@needs_fast_bf16
def test_torch_switch_opts_in_and_row_dots_stay_fp32():
    """Under torch's bf16 switch the chunked GEMMs take bf16 operands, the switch is restored, and the
    non-GEMM row dots (sum_p2 path) keep fp32 accuracy relative to the bf16-operand logits."""
    inp = _bf16_case(seed=10)
    h, w, y = inp["hidden"], inp["weight"], inp["targets"]
    with chunked._set_mkldnn_precision("bf16"):
        got = linear_token_stats(h, w, y, backend="chunked", chunk_size=6, want=("logp", "entropy", "sum_p2"))
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    ref = linear_token_stats(_to64(h.bfloat16()), _to64(w.bfloat16()), y, backend="naive",
                             want=("logp", "entropy", "sum_p2"))
    for name in ("logp", "entropy", "sum_p2"):
        torch.testing.assert_close(getattr(got, name).double(), getattr(ref, name), rtol=2e-5, atol=2e-5)


@pytest.mark.slow
def test_compiled_fused_kernels_match_float64():
    """The torch.compile'd chunk math (the production CPU path) against float64; ~10-20 s of compilation."""
    chunked._FUSE_BROKEN = False
    inp = make_inputs(45, 16, 257, seed=14, dtype=torch.float32, scale=3.0)
    inp["targets"][:20] = (inp["hidden"] @ inp["weight"].T).detach()[:20].argmax(-1)
    h, w, y = inp["hidden"], inp["weight"], inp["targets"]
    h64, w64 = _to64(h), _to64(w)
    for temperature, chunk in ((1.0, 8), (0.7, 16)):  # ragged last chunks: one dynamic-shape compilation
        plan = make_plan(("logp", "entropy"), temperature, None, False)
        got = chunked.chunked_token_stats(h, w, y, plan, chunk_size=chunk, fuse=True)
        got_obj = type("S", (), got)
        ref = linear_token_stats(h64, w64, y, temperature=temperature, backend="naive")
        _check(got_obj, ref, h, w, h64, w64, 45, tol=2e-5, gtol=1e-5)
    assert not chunked._FUSE_BROKEN, "compilation failed; the eager fallback ran"


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("want", [("logp", "entropy"), ("logp", "entropy", "sum_p2", "max_logit")])
def test_kept_last_chunk_backward_is_reentrant(monkeypatch, fused, want):
    """The first backward reuses the forward's last chunk, a second one (retain_graph) recomputes it: the
    gradients are bitwise equal, and match float64."""
    if fused:
        monkeypatch.setattr(chunked, "FUSE_MIN_ELEMENTS", 0)
        monkeypatch.setattr(chunked, "_FUSE_BROKEN", True)
    inp = make_inputs(23, 8, 131, seed=15, dtype=torch.float32, scale=2.0)
    h, w, y = inp["hidden"], inp["weight"], inp["targets"]
    for chunk in (6, 64):  # ragged chunks; one chunk (no recompute at all in the first backward)
        got = linear_token_stats(h, w, y, temperature=0.9, backend="chunked", chunk_size=chunk, want=want)
        loss = _loss(got, 23)
        first = torch.autograd.grad(loss, (h, w), retain_graph=True)
        second = torch.autograd.grad(loss, (h, w))
        for a, b in zip(first, second):
            assert torch.equal(a, b)
        h64, w64 = _to64(h), _to64(w)
        ref = linear_token_stats(h64, w64, y, temperature=0.9, backend="naive", want=want)
        rh, rw = torch.autograd.grad(_loss(ref, 23), (h64, w64))
        assert rel_err(first[0], rh) < 1e-5 and rel_err(first[1], rw) < 1e-5
