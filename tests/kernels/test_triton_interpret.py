"""Triton kernels under the CPU interpreter (TRITON_INTERPRET=1, fp32 dots) against the float64 naive reference.

Skipped when `triton` is not installed (it is an optional test dependency: pip install creditrl[triton]).
Shapes are tiny and odd (V not a multiple of the vocab block, N not a multiple of the row block), kernels.md §9.5.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from creditrl.kernels import LpRegProxy, linear_token_stats  # noqa: E402
from creditrl.kernels.dispatch import triton_interpreting  # noqa: E402

from .helpers import ALL_WANT, DIFF_FLOAT_OUTPUTS, make_inputs, random_upstream, rel_err  # noqa: E402

if torch.cuda.is_available() or not triton_interpreting():
    pytest.skip("interpreter tests run on CPU-only machines with TRITON_INTERPRET=1 (see conftest.py)",
                allow_module_level=True)

from creditrl.kernels import triton_kernels  # noqa: E402

if type(triton_kernels._stats_fwd_kernel).__name__ != "InterpretedFunction":
    pytest.skip("triton kernels were imported before TRITON_INTERPRET=1 was set", allow_module_level=True)


def _as64(inp: dict) -> dict:
    out = {k: v for k, v in inp.items()}
    out["hidden"] = inp["hidden"].detach().double().requires_grad_()
    out["weight"] = inp["weight"].detach().double().requires_grad_()
    if "ref" in inp:
        out["ref"] = tuple(t.double() for t in inp["ref"])
    return out


def _run(backend, inp, **kw):
    return linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], ref=inp.get("ref"), backend=backend, **kw)


def _compare(inp, rtol=2e-5, atol=5e-5, grad_tol=2e-5, **kw):
    ref_inp = _as64(inp)
    got = _run("triton", inp, **kw)
    ref = _run("naive", ref_inp, **kw)
    for name, expected in ref.as_dict().items():
        actual = getattr(got, name)
        assert actual is not None, name
        if not expected.is_floating_point():
            assert torch.equal(actual, expected), name
            continue
        assert actual.dtype == torch.float32, name
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(actual)), name
        torch.testing.assert_close(actual[finite].double(), expected[finite], rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")
    n = inp["targets"].shape[0]
    gg = torch.autograd.grad(random_upstream(got, DIFF_FLOAT_OUTPUTS, n), (inp["hidden"], inp["weight"]))
    gr = torch.autograd.grad(random_upstream(ref, DIFF_FLOAT_OUTPUTS, n), (ref_inp["hidden"], ref_inp["weight"]))
    for g, r, like in zip(gg, gr, (inp["hidden"], inp["weight"])):
        assert g.dtype == like.dtype
        assert rel_err(g, r) < grad_tol
    return got


@pytest.mark.parametrize("n,h,v,temperature", [(1, 8, 97, 1.0), (7, 33, 1000, 0.7), (70, 16, 300, 1.3)])
def test_logp_entropy_odd_shapes(n, h, v, temperature):
    inp = make_inputs(n, h, v, seed=n + v, dtype=torch.float32, scale=1.5)
    _compare(inp, temperature=temperature, want=("logp", "entropy", "lse", "max_logit", "argmax"))


@pytest.mark.parametrize("lp", [LpRegProxy(threshold=0.1),
                                LpRegProxy(threshold=0.05, proxy_temperature=0.8),
                                LpRegProxy(threshold=0.01, rule="fixed", threshold_temperature=1.3),
                                LpRegProxy(threshold=0.1, soft=True)], ids=["minp", "minp_tq", "fixed", "soft"])
def test_all_outputs_with_lp_reg_ref_and_ignored_rows(lp):
    inp = make_inputs(37, 20, 301, seed=5, dtype=torch.float32, scale=0.5, ref=True, ignore=(0, 12, 36))
    logits = inp["hidden"].detach() @ inp["weight"].detach().T
    inp["targets"][1:8] = logits[1:8].argmax(-1)  # sampled tokens inside the keep set, as in real rollouts
    want = ALL_WANT + (() if lp.soft else ("proxy_kl",))
    got = _compare(inp, temperature=0.7, want=want, lp_reg=lp)
    assert not got.logp[[0, 12, 36]].any() and not got.target_in_proxy[[0, 12, 36]].any()
    assert got.target_in_proxy.any() and not got.target_in_proxy.all()  # both branches of the keep set exercised


def test_vocab_smaller_than_block_and_multiple_backward_slices():
    """V < BLOCK_N (the -inf sentinel trap, kernels.md §5.2) and a backward split into several vocab slices."""
    small = make_inputs(5, 8, 5, seed=1, dtype=torch.float32)
    _compare(small, want=("logp", "entropy", "sum_p2"))
    inp = make_inputs(9, 12, 333, seed=2, dtype=torch.float32)
    _compare(inp, want=("logp", "entropy"), workspace_bytes=9 * 4 * 64)  # 64-column slices


@pytest.mark.parametrize("shift,sharp", [(1e3, 1.0), (-1e3, 1.0), (0.0, 40.0)])
def test_shifted_and_peaked_rows(shift, sharp):
    inp = make_inputs(6, 5, 130, seed=21, dtype=torch.float32)
    h = torch.cat([inp["hidden"].detach() * sharp, torch.ones(6, 1)], 1).requires_grad_()
    w = torch.cat([inp["weight"].detach(), torch.full((130, 1), shift)], 1).requires_grad_()
    # fp32 logits of magnitude 1e3 carry ~1e-4 absolute rounding, so compare against float64 of the same inputs
    # with a tolerance scaled to that magnitude
    got = _compare({"hidden": h, "weight": w, "targets": inp["targets"]}, want=("logp", "entropy"),
                   lp_reg=LpRegProxy(threshold=0.02), atol=2e-3, rtol=1e-5, grad_tol=1e-3)
    assert torch.isfinite(got.entropy).all()


def test_uniform_rows_entropy_is_log_v():
    h = torch.randn(3, 4, requires_grad=True)
    w = torch.zeros(1001, 4, requires_grad=True)
    got = linear_token_stats(h, w, torch.tensor([0, 500, 1000]), backend="triton", want=("sum_p2",))
    torch.testing.assert_close(got.entropy, torch.full((3,), math.log(1001)))
    torch.testing.assert_close(got.sum_p2, torch.full((3,), 1 / 1001))


def test_bf16_inputs_are_upcast_and_outputs_fp32():
    inp = make_inputs(10, 16, 200, seed=3, dtype=torch.bfloat16)
    got = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="triton", temperature=0.7)
    ref = _run("naive", _as64(inp), temperature=0.7)
    assert got.logp.dtype == torch.float32
    torch.testing.assert_close(got.logp.double(), ref.logp, rtol=1e-5, atol=5e-5)
    gh, gw = torch.autograd.grad((got.logp + got.entropy).sum(), (inp["hidden"], inp["weight"]))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16


def test_no_grad_forward_matches_training_forward_bitwise():
    inp = make_inputs(20, 16, 150, seed=4, dtype=torch.float32, ref=True)
    lp = LpRegProxy(threshold=0.05)
    a = _run("triton", inp, lp_reg=lp, want=ALL_WANT)
    with torch.no_grad():
        b = _run("triton", inp, lp_reg=lp, want=ALL_WANT)
    for name, value in a.as_dict().items():
        assert torch.equal(value.detach(), getattr(b, name)), name
