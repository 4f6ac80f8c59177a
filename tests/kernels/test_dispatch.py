"""The dispatcher: backend selection, input validation and the want/lp_reg/ref contract."""

from __future__ import annotations

import pytest
import torch

from creditrl.kernels import LpRegProxy, TokenStats, kernels_mode, linear_token_stats
from creditrl.kernels.dispatch import _resolve_backend

from .helpers import make_inputs


def _inp():
    return make_inputs(6, 4, 17, seed=0, dtype=torch.float32)


def test_auto_on_cpu_is_the_chunked_path_bitwise():
    inp = _inp()
    auto = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"])
    chunked = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="chunked")
    assert isinstance(auto, TokenStats)
    assert torch.equal(auto.logp, chunked.logp) and torch.equal(auto.entropy, chunked.entropy)
    assert auto.sum_p2 is None and auto.proxy_logp is None and auto.ref_kl is None


def test_reference_is_an_alias_of_naive():
    inp = _inp()
    a = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="reference")
    b = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], backend="naive")
    assert torch.equal(a.logp, b.logp)


def test_triton_on_cpu_requires_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr("creditrl.kernels.dispatch.triton_available", lambda: True)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _resolve_backend("triton", torch.device("cpu"))
    monkeypatch.setattr("creditrl.kernels.dispatch.triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="optional `triton`"):
        _resolve_backend("triton", torch.device("cpu"))
    assert _resolve_backend("auto", torch.device("cpu")) == "chunked"
    assert kernels_mode() in ("cuda", "interpret", "torch")


def test_lp_reg_accepts_a_mapping():
    inp = _inp()
    a = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], lp_reg={"threshold": 0.1})
    b = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], lp_reg=LpRegProxy(threshold=0.1))
    assert torch.equal(a.proxy_log_mass, b.proxy_log_mass)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"want": ("logp", "bogus")}, ValueError, "unknown statistics"),
    ({"want": ("proxy_logp",)}, ValueError, "lp_reg"),
    ({"want": ("ref_kl",)}, ValueError, "ref="),
    ({"want": ("proxy_kl",), "lp_reg": {"threshold": 0.1, "soft": True}}, ValueError, "hard"),
    ({"temperature": 0.0}, ValueError, "temperature"),
    ({"backend": "cuda"}, ValueError, "backend"),
    ({"vocab_limit": 18}, ValueError, "vocab_limit"),
    ({"lp_reg": {"threshold": 0.0}}, ValueError, "threshold"),
    ({"lp_reg": {"threshold": 0.1, "rule": "topk"}}, ValueError, "rule"),
    ({"lp_reg": 0.1}, TypeError, "lp_reg"),
])
def test_bad_arguments_raise(kwargs, error, match):
    inp = _inp()
    with pytest.raises(error, match=match):
        linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], **kwargs)


def test_bad_inputs_raise():
    inp = _inp()
    h, w, y = inp["hidden"], inp["weight"], inp["targets"]
    with pytest.raises(ValueError, match="hidden size"):
        linear_token_stats(h, w[:, :3], y)
    with pytest.raises(ValueError, match="targets"):
        linear_token_stats(h, w, y[:3])
    with pytest.raises(TypeError, match="int64"):
        linear_token_stats(h, w, y.float())
    with pytest.raises(ValueError, match=r"\[0, 17\)"):
        linear_token_stats(h, w, torch.full_like(y, 17))
    with pytest.raises(ValueError, match=r"\[0, 17\)"):
        linear_token_stats(h, w, torch.full_like(y, -1))
    with pytest.raises(ValueError, match="ref_weight"):
        linear_token_stats(h, w, y, ref=(torch.randn(6, 5), torch.randn(16, 5)))
    with pytest.raises(TypeError, match="pair"):
        linear_token_stats(h, w, y, ref=torch.randn(6, 5))


def test_int32_targets_and_custom_ignore_index():
    inp = _inp()
    y = inp["targets"].clone()
    y[2] = 0
    got = linear_token_stats(inp["hidden"], inp["weight"], y.int(), ignore_index=0)
    assert got.logp[2] == 0 and got.entropy[2] == 0 and (got.logp[y != 0] < 0).all()
