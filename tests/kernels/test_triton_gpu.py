"""Compiled Triton kernels on a CUDA GPU (marked `gpu`; skipped without CUDA or triton).

What the interpreter cannot check (kernels.md §9.5): bf16 dots, tf32 defaults, batch invariance, realistic
Qwen-like shapes (verl's odd shapes, §8.2) and peaked inputs (verl #2899 only showed on peaked rows).
Values are compared with float64 computed from the same bf16-rounded inputs on a row subsample; gradients with
the chunked fp32 path by relative Frobenius error.
"""

from __future__ import annotations

import pytest
import torch

from creditrl.kernels import LpRegProxy, linear_token_stats

from .helpers import ALL_WANT, DIFF_FLOAT_OUTPUTS, random_upstream, rel_err

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("triton")

# (N, H, V): verl's test shapes (tests/utils/test_linear_cross_entropy.py) and the Qwen2.5 vocabularies.
QWEN_LIKE_SHAPES = [(2169, 896, 151936), (1937, 3584, 152064), (1530, 2048, 32256), (513, 1536, 151936)]


def _peaked_inputs(n: int, h: int, v: int, *, seed: int = 0, target_logit: float = 15.0, dtype=torch.bfloat16):
    """hidden = target_logit * W[y] / |W[y]| + N(0, 1) noise with W ~ N(0, 1/h): the target logit is about
    `target_logit`, the others about N(0, 1), so rows are peaked like a trained model's (kernels.md §11)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    weight = (torch.randn(v, h, device="cuda", generator=g) / h**0.5).to(dtype)
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    w_y = weight[targets].float()
    hidden = target_logit * w_y / w_y.norm(dim=1, keepdim=True) + torch.randn(n, h, device="cuda", generator=g)
    return hidden.to(dtype).requires_grad_(), weight.requires_grad_(), targets


def _float64_rows(hidden, weight, targets, rows, **kw):
    h64 = hidden.detach()[rows].double()
    w64 = weight.detach().double()
    return linear_token_stats(h64, w64, targets[rows], backend="naive", **kw)


@pytest.mark.parametrize("n,h,v", QWEN_LIKE_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_qwen_shapes_against_float64(n, h, v, temperature):
    hidden, weight, targets = _peaked_inputs(n, h, v, seed=n)
    targets[::97] = -100
    got = linear_token_stats(hidden, weight, targets, temperature=temperature, backend="triton",
                             want=("logp", "entropy", "sum_p2"))
    rows = torch.arange(0, n, max(1, n // 64), device="cuda")
    rows = rows[targets[rows] != -100]
    ref = _float64_rows(hidden, weight, targets, rows, temperature=temperature, want=("sum_p2",))
    for name in ("logp", "entropy", "lse", "sum_p2"):
        torch.testing.assert_close(getattr(got, name)[rows].double(), getattr(ref, name), rtol=1e-4, atol=2e-4)
    chunked = linear_token_stats(hidden, weight, targets, temperature=temperature, backend="chunked",
                                 want=("logp", "entropy", "sum_p2"))
    g_t = torch.autograd.grad(random_upstream(got, DIFF_FLOAT_OUTPUTS, n), (hidden, weight))
    g_c = torch.autograd.grad(random_upstream(chunked, DIFF_FLOAT_OUTPUTS, n), (hidden, weight))
    for a, b in zip(g_t, g_c):
        assert a.dtype == torch.bfloat16
        assert rel_err(a, b) < 2e-2


def test_fp32_all_outputs_against_float64():
    n, h, v = 300, 256, 5003
    hidden, weight, targets = _peaked_inputs(n, h, v, seed=1, dtype=torch.float32)
    g = torch.Generator(device="cuda").manual_seed(2)
    ref_pair = (torch.randn(n, h + 64, device="cuda", generator=g),
                torch.randn(v, h + 64, device="cuda", generator=g) / (h + 64) ** 0.5)
    lp = LpRegProxy(threshold=0.02)
    kw = dict(temperature=0.7, want=ALL_WANT + ("proxy_kl",), lp_reg=lp, ref=ref_pair)
    got = linear_token_stats(hidden, weight, targets, backend="triton", **kw)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = linear_token_stats(h64, w64, targets, backend="naive", **{**kw, "ref": tuple(t.double() for t in ref_pair)})
    for name, expected in ref.as_dict().items():
        actual = getattr(got, name)
        if not expected.is_floating_point():
            assert torch.equal(actual, expected), name
            continue
        finite = torch.isfinite(expected)
        torch.testing.assert_close(actual[finite].double(), expected[finite], rtol=1e-4, atol=1e-4)
    gg = torch.autograd.grad(random_upstream(got, DIFF_FLOAT_OUTPUTS, n), (hidden, weight))
    gr = torch.autograd.grad(random_upstream(ref, DIFF_FLOAT_OUTPUTS, n), (h64, w64))
    for a, b in zip(gg, gr):
        assert rel_err(a, b) < 1e-4


def test_row_alone_equals_row_in_batch_bitwise():
    """kernels.md §5.3: fixed K-block and split width make a row's statistics independent of the batch."""
    hidden, weight, targets = _peaked_inputs(1000, 896, 151936, seed=3)
    with torch.no_grad():
        batch = linear_token_stats(hidden, weight, targets, backend="triton")
        for i in (0, 517, 999):
            alone = linear_token_stats(hidden[i : i + 1], weight, targets[i : i + 1], backend="triton")
            assert torch.equal(alone.logp, batch.logp[i : i + 1])
            assert torch.equal(alone.entropy, batch.entropy[i : i + 1])


def test_no_grad_forward_equals_training_forward_and_is_deterministic():
    hidden, weight, targets = _peaked_inputs(777, 1536, 151936, seed=4)
    train = linear_token_stats(hidden, weight, targets, backend="triton")
    with torch.no_grad():
        old = linear_token_stats(hidden, weight, targets, backend="triton")
    assert torch.equal(train.logp.detach(), old.logp) and torch.equal(train.entropy.detach(), old.entropy)
    g1 = torch.autograd.grad(train.logp.sum() + train.entropy.sum(), (hidden, weight))
    again = linear_token_stats(hidden, weight, targets, backend="triton")
    g2 = torch.autograd.grad(again.logp.sum() + again.entropy.sum(), (hidden, weight))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_mixed_bf16_hidden_fp32_weight():
    hidden, weight, targets = _peaked_inputs(257, 896, 151936, seed=5)
    w32 = weight.detach().float().requires_grad_()
    got = linear_token_stats(hidden, w32, targets, backend="triton")
    ref = linear_token_stats(hidden, weight, targets, backend="triton")
    torch.testing.assert_close(got.logp, ref.logp.detach(), rtol=0, atol=0)  # W tiles are cast to bf16 in-kernel
    gh, gw = torch.autograd.grad(got.logp.sum(), (hidden, w32))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.float32
