"""Pair forward on a real (small, random) causal LM: fused-op statistics vs explicit full logits in float64."""

from __future__ import annotations

import json

import pytest
import torch

from creditrl.models.tiny import TinyModelSpec, build_tiny_model
from creditrl.learner.pairs import pair_batch
from creditrl.preference.data import load_pairs
from creditrl.learner.pair_stats import ReferenceStats, frozen_reference, pair_token_stats
from creditrl.algorithms.pair_loss import pair_loss
from creditrl.learner.batch import make_micro_batch
from creditrl.models.build import load_causal_lm
from creditrl.models.build import load_tokenizer

SPEC = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref_fwd")
    path = build_tiny_model(root / "m", SPEC, seed=0)
    tok = load_tokenizer(str(path))
    policy = load_causal_lm(str(path)).double()
    ref = load_causal_lm(str(path)).double().eval().requires_grad_(False)
    with torch.no_grad():  # make the reference differ from the policy
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    f = root / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "47+5=", "chosen": "52", "rejected": "42"}, {"prompt": "95+7=", "chosen": "102", "rejected": "92"},
        {"prompt": "8+8=", "chosen": "16", "rejected": "6"}]))
    pairs = load_pairs([str(f)], tok)
    batch = pair_batch(pairs, tok.pad_token_id)
    mb = make_micro_batch(batch, list(range(len(batch))), tok.pad_token_id)
    return policy, ref, batch, mb


def _explicit(model, mb):
    """Full [b, L, V] log-softmax of the model, then per-response-token values, in float64."""
    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits.double()
    return torch.log_softmax(logits, -1)[mb.rows, mb.positions]  # [N, V]


def test_logp_ref_logp_and_kl_match_explicit_logits(setup):
    policy, ref, batch, mb = setup
    refs = ReferenceStats(frozen_reference(ref), need_hidden=True, cache=False)
    stats = pair_token_stats(policy, mb, batch.prompt_keys, refs, want_kl=True)
    lp, lr = _explicit(policy, mb), _explicit(ref, mb)
    n = torch.arange(len(mb.targets))
    cols = [t for r in range(len(batch)) for t in range(int(mb.mask[r].sum()))]
    get = lambda x: x[mb.rows, torch.tensor(cols)]  # noqa: E731
    assert torch.allclose(get(stats["logp"]).double(), lp[n, mb.targets], atol=1e-5)
    assert torch.allclose(get(stats["ref_logp"]).double(), lr[n, mb.targets], atol=1e-5)
    kl = (lr.exp() * (lr - lp)).sum(-1)
    assert torch.allclose(get(stats["ref_kl"]).double(), kl, atol=1e-6)
    assert float(kl.detach().min()) > 0
    assert float((stats["ref_kl"] * (1 - mb.mask)).abs().sum()) == 0.0  # padding holds 0


def test_kl_gradient_matches_explicit(setup):
    """d/dθ Σ KL through the fused op equals autograd through the explicit [N, V] formula."""
    policy, ref, batch, mb = setup
    refs = ReferenceStats(frozen_reference(ref), need_hidden=True, cache=False)
    policy.zero_grad()
    (pair_token_stats(policy, mb, batch.prompt_keys, refs, want_kl=True)["ref_kl"].sum()).backward()
    fused = {k: p.grad.clone() for k, p in policy.named_parameters()}
    policy.zero_grad()
    lp = _explicit(policy, mb)
    with torch.no_grad():
        lr = _explicit(ref, mb)
    (lr.exp() * (lr - lp)).sum().backward()
    for k, p in policy.named_parameters():
        assert torch.allclose(fused[k], p.grad, atol=1e-6), k
    policy.zero_grad()


def test_reference_cache_is_exact(setup):
    policy, ref, batch, mb = setup
    refs = ReferenceStats(frozen_reference(ref), need_hidden=True, cache=True)
    with torch.no_grad():
        first = pair_token_stats(policy, mb, batch.prompt_keys, refs, want_kl=True)
        assert len(refs) == len(batch)
        second = pair_token_stats(policy, mb, batch.prompt_keys, refs, want_kl=True)
    for k in first:
        assert torch.equal(first[k], second[k]), k


def test_pair_loss_glue_dpo_and_tdpo(setup):
    policy, ref, batch, mb = setup
    refs = ReferenceStats(frozen_reference(ref), need_hidden=True, cache=False)
    with torch.no_grad():
        stats = pair_token_stats(policy, mb, batch.prompt_keys, refs, want_kl=True)
    lp, lr = _explicit(policy, mb), _explicit(ref, mb)
    n = torch.arange(len(mb.targets))
    tok_ratio = (lp[n, mb.targets] - lr[n, mb.targets]).tolist()
    tok_kl = (lr.exp() * (lr - lp)).sum(-1).tolist()
    m, kl = [0.0] * len(batch), [0.0] * len(batch)
    for i, r in enumerate(mb.rows.tolist()):
        m[r] += tok_ratio[i]
        kl[r] += tok_kl[i]
    b = len(batch) // 2
    out = pair_loss(stats, mb.mask, "dpo", beta=0.1)
    out1 = pair_loss(stats, mb.mask, "tdpo1", beta=0.1)
    out2 = pair_loss(stats, mb.mask, "tdpo2", beta=0.1, alpha=0.5)
    for i in range(b):
        d = m[i] - m[b + i]
        assert float(out.loss[i]) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-0.1 * d))), abs=1e-6)
        z1 = d - (kl[b + i] - kl[i])
        assert float(out1.loss[i]) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-0.1 * z1))), abs=1e-6)
        z2 = d - 0.5 * (kl[b + i] - kl[i])
        assert float(out2.loss[i]) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-0.1 * z2))), abs=1e-6)
        assert float(out1.metrics["kl/chosen"][i]) == pytest.approx(kl[i], abs=1e-6)
    with pytest.raises(ValueError, match="cDPO"):
        pair_loss(stats, mb.mask, "cdpo", beta=0.1)
    with pytest.raises(ValueError):
        pair_loss(stats, mb.mask, "ipo", beta=0.1)
