"""DPO / TDPO1 / TDPO2 / cDPO against float64 references written from the formulas and the spec vectors (§15)."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.algorithms.dpo import cdpo_loss, cdpo_token_weights, dpo_loss, masked_log_ratios
from creditrl.algorithms.tdpo import tdpo_loss
from creditrl.kernels import linear_token_stats
from creditrl.learner.pair_stats import contrastive_token_logp

D = torch.float64

# Spec §15.2 test vector: one pair, vocab 3, two response positions each.
POL_W = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.9]], dtype=D)
REF_W = torch.tensor([[0.8, 0.1, -0.5], [0.3, 0.3, 0.3]], dtype=D)
POL_L = torch.tensor([[0.0, 1.0, 0.0], [-0.2, 0.4, 0.1]], dtype=D)
REF_L = torch.tensor([[0.2, 0.6, 0.1], [0.0, 0.9, -0.3]], dtype=D)
Y_W = torch.tensor([0, 2])
Y_L = torch.tensor([1, 1])


def _lsm(z: torch.Tensor) -> torch.Tensor:
    """Float64 log-softmax from the definition z - log Σ exp z."""
    return z - torch.log(torch.exp(z).sum(-1, keepdim=True))


def _seq(pol, ref, y):
    """(M(y), D_SeqKL(y)) from the formulas of §15.2, in float64."""
    lp, lr = _lsm(pol), _lsm(ref)
    m = sum(float(lp[t, y[t]] - lr[t, y[t]]) for t in range(len(y)))
    kl = sum(float((lr[t].exp() * (lr[t] - lp[t])).sum()) for t in range(len(y)))
    return m, kl


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_spec_vector_sequence_aggregates():
    m_w, kl_w = _seq(POL_W, REF_W, Y_W)
    m_l, kl_l = _seq(POL_L, REF_L, Y_L)
    assert m_w == pytest.approx(0.4881868874, abs=1e-9)
    assert kl_w == pytest.approx(0.0705235094, abs=1e-9)
    assert m_l == pytest.approx(-0.0218568278, abs=1e-9)
    assert kl_l == pytest.approx(0.1015436759, abs=1e-9)


def test_dpo_spec_vector():
    m_w, _ = _seq(POL_W, REF_W, Y_W)
    m_l, _ = _seq(POL_L, REF_L, Y_L)
    out = dpo_loss(torch.tensor([m_w], dtype=D), torch.tensor([m_l], dtype=D), beta=0.1)
    assert m_w - m_l == pytest.approx(0.5100437151, abs=1e-9)
    assert float(out.loss) == pytest.approx(0.6679701403, abs=1e-9)
    assert float(out.chosen_rewards) == pytest.approx(0.0488186887, abs=1e-9)
    assert float(out.rejected_rewards) == pytest.approx(-0.0021856828, abs=1e-9)


@pytest.mark.parametrize("variant,expected", [("tdpo1", 0.6694828052), ("tdpo2", 0.6687261722)])
def test_tdpo_spec_vector(variant, expected):
    m_w, kl_w = _seq(POL_W, REF_W, Y_W)
    m_l, kl_l = _seq(POL_L, REF_L, Y_L)
    t = lambda x: torch.tensor([x], dtype=D)  # noqa: E731
    out = tdpo_loss(t(m_w), t(m_l), t(kl_w), t(kl_l), beta=0.1, alpha=0.5, variant=variant)
    assert float(out.loss) == pytest.approx(expected, abs=1e-9)
    assert float(out.chosen_rewards) == pytest.approx(0.0558710397, abs=1e-9)
    assert float(out.rejected_rewards) == pytest.approx(0.0079686848, abs=1e-9)
    assert float(out.chosen_kl) == pytest.approx(0.0705235094, abs=1e-9)


def test_tdpo_vector_through_fused_op():
    """The per-token ref_kl of the kernel op (hidden = logits, weight = I) reproduces the spec vector."""
    eye = torch.eye(3, dtype=D)
    for pol, ref, y, (m_exp, kl_exp) in ((POL_W, REF_W, Y_W, (0.4881868874, 0.0705235094)),
                                         (POL_L, REF_L, Y_L, (-0.0218568278, 0.1015436759))):
        s = linear_token_stats(pol, eye, y, want=("logp", "ref_kl"), ref=(ref, eye), backend="chunked")
        r = linear_token_stats(ref, eye, y, want=("logp",), backend="chunked")
        assert float((s.logp - r.logp).sum()) == pytest.approx(m_exp, abs=1e-9)
        assert float(s.ref_kl.sum()) == pytest.approx(kl_exp, abs=1e-9)


def test_tdpo_gradients_flow_as_specified():
    """TDPO1: gradient through both SeqKL terms; TDPO2: none through the chosen SeqKL, α on the rejected one."""
    beta, alpha = 0.1, 0.5
    vals = [0.3, -0.2, 0.05, 0.12]
    for variant in ("tdpo1", "tdpo2"):
        x = [torch.tensor([v], dtype=D, requires_grad=True) for v in vals]
        tdpo_loss(*x, beta=beta, alpha=alpha, variant=variant).loss.sum().backward()
        a = 1.0 if variant == "tdpo1" else alpha
        z = vals[0] - vals[1] - a * (vals[3] - vals[2])
        s = 1.0 / (1.0 + math.exp(beta * z))  # d/dz of −log σ(βz) is −β σ(−βz)
        assert float(x[0].grad) == pytest.approx(-beta * s, abs=1e-12)
        assert float(x[1].grad) == pytest.approx(beta * s, abs=1e-12)
        assert float(x[3].grad) == pytest.approx(beta * a * s, abs=1e-12)
        expected_chosen_kl = -beta * s if variant == "tdpo1" else 0.0
        assert float(x[2].grad if x[2].grad is not None else 0.0) == pytest.approx(expected_chosen_kl, abs=1e-12)


def test_gradcheck_dpo_and_tdpo():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(4, dtype=D, generator=g, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda a, b: dpo_loss(a, b, 0.3, 0.1).loss, args[:2])
    assert torch.autograd.gradcheck(lambda *a: tdpo_loss(*a, beta=0.2, alpha=0.7, variant="tdpo1").loss, args)
    # TDPO2 stops the gradient of the chosen SeqKL on purpose: gradcheck the other three inputs
    kl_w = args[2].detach()
    assert torch.autograd.gradcheck(
        lambda a, b, d: tdpo_loss(a, b, kl_w, d, beta=0.2, alpha=0.7, variant="tdpo2").loss,
        (args[0], args[1], args[3]))


def test_dpo_label_smoothing_formula():
    z = torch.tensor([0.7, -1.3, 0.0], dtype=D)
    out = dpo_loss(z, torch.zeros(3, dtype=D), beta=0.5, label_smoothing=0.2)
    for i, zi in enumerate(z.tolist()):
        ref = -(0.8) * _logsig(0.5 * zi) - 0.2 * _logsig(-0.5 * zi)
        assert float(out.loss[i]) == pytest.approx(ref, abs=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        dpo_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError):
        dpo_loss(torch.zeros(2), torch.zeros(2), label_smoothing=0.5)
    with pytest.raises(ValueError):
        tdpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), variant="tdpo3")
    with pytest.raises(ValueError):
        tdpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError):
        masked_log_ratios(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        cdpo_loss(*([torch.zeros(1, 2)] * 6), mode="token")


# ---- cDPO ---------------------------------------------------------------------------------------------------
def _cdpo_case():
    # two pairs; chosen lengths 3 / 1, rejected lengths 2 / 3 (padded to T=3)
    dw = torch.tensor([[0.2, -0.1, 0.4], [0.3, 0.0, 0.0]], dtype=D)
    mw = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=D)
    dl = torch.tensor([[-0.5, 0.25, 0.0], [0.1, -0.2, 0.6]], dtype=D)
    ml = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=D)
    ww = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=D)
    wl = torch.tensor([[0.9, 0.3, 0.0], [0.5, 0.8, 1.0]], dtype=D)
    return dw, mw, ww, dl, ml, wl


def test_cdpo_sequence_mode_reference():
    dw, mw, ww, dl, ml, wl = _cdpo_case()
    out = cdpo_loss(dw, mw, ww, dl, ml, wl, beta=0.1, mode="sequence")
    for i in range(2):
        z = sum(ww[i, t] * dw[i, t] * mw[i, t] for t in range(3)) - sum(wl[i, t] * dl[i, t] * ml[i, t] for t in range(3))
        assert float(out.loss[i]) == pytest.approx(-_logsig(0.1 * float(z)), abs=1e-12)
        assert float(out.chosen_rewards[i]) == pytest.approx(0.1 * float((dw[i] * mw[i]).sum() / mw[i].sum()), abs=1e-12)


def test_cdpo_per_position_reference():
    dw, mw, ww, dl, ml, wl = _cdpo_case()
    out = cdpo_loss(dw, mw, ww, dl, ml, wl, beta=0.1, mode="per_position")
    for i in range(2):
        span = int(max(mw[i].sum(), ml[i].sum()))
        terms = [-_logsig(0.1 * float(ww[i, t] * dw[i, t] * mw[i, t] - wl[i, t] * dl[i, t] * ml[i, t]))
                 for t in range(span)]
        assert float(out.loss[i]) == pytest.approx(sum(terms) / span, abs=1e-12)


def test_cdpo_gradcheck_and_no_weight_gradient():
    dw, mw, ww, dl, ml, wl = _cdpo_case()
    for mode in ("sequence", "per_position"):
        assert torch.autograd.gradcheck(
            lambda a, b: cdpo_loss(a, mw, ww, b, ml, wl, 0.2, 0.1, mode).loss,
            (dw.clone().requires_grad_(), dl.clone().requires_grad_()))
    w = wl.clone().requires_grad_()
    d = dl.clone().requires_grad_()
    cdpo_loss(dw, mw, ww, d, ml, w, 0.1).loss.sum().backward()
    assert w.grad is None  # weights are constants
    assert d.grad is not None and float(d.grad.abs().sum()) > 0


def test_cdpo_token_weights():
    ce = torch.log(torch.tensor([[0.2, 0.9, 0.5], [0.4, 0.6, 0.0 + 1e-3]], dtype=D))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    wr = cdpo_token_weights(ce, mask, "rejected")
    assert torch.allclose(wr, torch.tensor([[0.8, 0.1, 1.0], [0.6, 1.0, 0.0]], dtype=D))  # EOS (last valid) -> 1
    wc = cdpo_token_weights(ce, mask, "chosen", only_neg=False, eos_weight_one=False)
    assert torch.allclose(wc, torch.tensor([[0.2, 0.9, 0.5], [0.4, 0.6, 0.0]], dtype=D))
    assert torch.equal(cdpo_token_weights(ce, mask, "chosen"), mask)


def test_contrastive_token_logp_matches_explicit_logits():
    g = torch.Generator().manual_seed(1)
    hp, hn = torch.randn(5, 4, dtype=D, generator=g), torch.randn(5, 3, dtype=D, generator=g)
    wp, wn = torch.randn(7, 4, dtype=D, generator=g), torch.randn(7, 3, dtype=D, generator=g)
    y = torch.tensor([0, 6, 3, 3, 1])
    z = 2.0 * hp @ wp.T - hn @ wn.T  # β_CE = 1: 2 z_pos − z_neg
    ref = _lsm(z)[torch.arange(5), y]
    got = contrastive_token_logp(hp, wp, hn, wn, y, beta_ce=1.0)
    assert torch.allclose(got, ref, atol=1e-10)
