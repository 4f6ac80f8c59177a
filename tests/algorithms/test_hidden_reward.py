"""NTHR (spec §11.2, fully specified) and THR ([RECON] §11.3) token weights from old hidden states."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.algorithms import Algorithm, AlgorithmConfig
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.hidden_reward import (
    hidden_reward_scores, positive_aggregate, positive_anchor_threshold, prediction_errors, vstar_probabilities,
)
from creditrl.algorithms.nthr import NTHRConfig, NTHRWeight, nthr_eta
from creditrl.algorithms.thr import THRConfig, THRWeight
from creditrl.registry import PartSpec


def test_nthr_spec_vector():
    h_pos = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    q_pos = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]], dtype=torch.float64)
    h_neg = torch.tensor([[0.9, 0.1], [0.0, 1.0]], dtype=torch.float64)
    q_neg = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
    g_pos = prediction_errors(q_pos, torch.tensor([0, 1]))
    g_neg = prediction_errors(q_neg, torch.tensor([0, 2]))
    h = torch.cat([h_pos, h_neg])
    g = torch.cat([g_pos, g_neg])
    positive = torch.tensor([True, True, False, False])
    m = positive_aggregate(g, h, positive)
    assert m.flatten().tolist() == pytest.approx([0.15, -0.15, 0.0, 0.2, -0.15, -0.05], abs=1e-12)
    s = hidden_reward_scores(g, h, m)
    assert s[:2].tolist() == pytest.approx([0.06, 0.05], abs=1e-12)
    assert s[2:].tolist() == pytest.approx([0.056, -0.03], abs=1e-12)
    tau = positive_anchor_threshold(s, torch.tensor([0, 0, 1, 1]), positive, beta=1.0)
    assert tau == pytest.approx(0.055, abs=1e-12)
    assert (s[2:] > tau).tolist() == [True, False]
    assert nthr_eta(torch.tensor(0.5, dtype=torch.float64)).item() == 0.0  # rho = 0.5: the token gets A = 0
    assert nthr_eta(torch.tensor(0.25)).item() == pytest.approx(0.5)
    assert nthr_eta(torch.tensor(0.25), "success_rate").item() == pytest.approx(0.25)
    assert nthr_eta(torch.tensor(0.25), "failure_rate").item() == pytest.approx(0.75)


def test_vstar_probabilities_match_the_full_softmax_restricted_to_vstar():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(23, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 23, (9,), generator=g)
    t = 0.7
    full = torch.softmax(hidden @ weight.T / t, -1)
    old = full.gather(1, targets[:, None]).squeeze(1).log()
    vocab = targets.unique()
    probs, cols = vstar_probabilities(hidden, weight, targets, old, vocab, t)
    assert torch.allclose(probs, full[:, vocab], atol=1e-12)  # not renormalised
    assert torch.equal(vocab[cols], targets)


# ---- an independent float64 reference of NTHR / THR over whole groups ------------------------------------------
def make_batch(seed=1, T=5, d=4, V=11, temperature=1.0):
    """Two mixed groups (3 + 3 responses) and one all-correct group, binary rewards, GRPO advantages."""
    g = torch.Generator().manual_seed(seed)
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    lengths = [5, 3, 4, 2, 5, 5, 3, 1]
    B = len(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    adv = torch.zeros(B, dtype=torch.float64)
    for gid in group_ids.unique():
        idx = group_ids == gid
        r = rewards[idx]
        adv[idx] = (r - r.mean()) / (r.std() + 1e-6)
    hidden = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    weight = torch.randn(V, d, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 6, (B, T), generator=g)  # a small shared vocabulary: tokens repeat across responses
    old = torch.log_softmax(hidden @ weight.T / temperature, -1).gather(2, ids[..., None]).squeeze(-1)
    extras = {"old_hidden": hidden, "lm_head_weight": weight, "response_ids": ids,
              "temperature": torch.tensor(temperature, dtype=torch.float64)}
    lp = (old + 0.05 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    return LossInputs(lp, old, adv[:, None] * mask, mask, group_ids=group_ids, extras=extras)


def ref_group_scores(inp: LossInputs, beta=1.0):
    """Per token (i, t): (score, tau, rho) by the double-sum definition, or None outside mixed groups."""
    h, w, ids = inp.extras["old_hidden"], inp.extras["lm_head_weight"], inp.extras["response_ids"]
    temp = float(inp.extras["temperature"])
    full = torch.softmax(h @ w.T / temp, -1)
    out = {}
    for gid in inp.group_ids.unique().tolist():
        rows = [i for i in range(len(inp.group_ids)) if inp.group_ids[i] == gid]
        sign = {i: float((inp.advantages[i] * inp.mask[i]).sum()) for i in rows}
        pos_rows = [i for i in rows if sign[i] > 0]
        if not pos_rows or len(pos_rows) == len(rows):
            continue
        toks = [(i, t) for i in rows for t in range(inp.mask.shape[1]) if inp.mask[i, t] > 0]
        vocab = sorted({int(ids[i, t]) for i, t in toks})

        def gvec(i, t):
            return [(1.0 if v == int(ids[i, t]) else 0.0) - float(full[i, t, v]) for v in vocab]

        pos_toks = [(i, t) for (i, t) in toks if i in pos_rows]

        def score(i, t):
            gi = gvec(i, t)
            return sum(sum(a * b for a, b in zip(gi, gvec(j, u))) * float(h[i, t] @ h[j, u]) for j, u in pos_toks)

        scores = {(i, t): score(i, t) for i, t in toks}
        anchors = [sum(scores[(i, t)] for (j, t) in toks if j == i) / sum(1 for (j, _) in toks if j == i)
                   for i in pos_rows]
        tau = beta * min(anchors)
        rho = len(pos_rows) / len(rows)
        for key, s in scores.items():
            out[key] = (s, tau, rho)
    return out


def test_nthr_weights_match_the_double_sum_reference():
    inp = make_batch()
    w, new_mask, metrics = NTHRWeight(NTHRConfig())(inp)
    ref = ref_group_scores(inp)
    assert new_mask is None
    n_selected = 0
    for i in range(8):
        for t in range(5):
            if inp.mask[i, t] == 0:
                assert w[i, t].item() == 0.0
                continue
            expected = 1.0
            if (i, t) in ref and inp.advantages[i, t] < 0 and ref[(i, t)][0] > ref[(i, t)][1]:
                expected = 2 * abs(0.5 - ref[(i, t)][2])
                n_selected += 1
            assert w[i, t].item() == pytest.approx(expected, abs=1e-12), (i, t)
    assert n_selected > 0
    assert metrics["nthr/selected_frac"] == pytest.approx(n_selected / inp.mask.sum().item())


@pytest.mark.parametrize("direction,only_dominant", [("exploit", False), ("explore", False), ("exploit", True)])
def test_thr_weights_match_the_reference(direction, only_dominant):
    inp = make_batch(seed=2, temperature=0.8)
    cfg = THRConfig(direction=direction, strength=0.5, only_dominant=only_dominant)
    w, _, metrics = THRWeight(cfg)(inp)
    ref = ref_group_scores(inp)
    p = 0.5 if direction == "exploit" else -0.5
    values, dominant = [], 0
    for i in range(8):
        for t in range(5):
            if inp.mask[i, t] == 0:
                continue
            expected = 1.0
            if (i, t) in ref:
                s, tau, _ = ref[(i, t)]
                thr = float(inp.advantages[i, t]) * s
                values.append(thr)
                if abs(s) > tau:
                    expected = 1.0 + p * math.copysign(1.0, thr)
                    dominant += 1
                elif only_dominant:
                    expected = 0.0
            assert w[i, t].item() == pytest.approx(expected, abs=1e-12), (i, t)
    assert 0 < dominant < len(values)
    assert metrics["thr/value_mean"] == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert metrics["thr/value_abs_mean"] == pytest.approx(sum(map(abs, values)) / len(values), abs=1e-12)


def test_non_mixed_groups_keep_their_advantage():
    inp = make_batch()
    w, _, _ = THRWeight(THRConfig(only_dominant=True))(inp)
    assert torch.equal(w[6:], inp.mask[6:])  # group 2 is all correct: THR is not defined, weight 1


def test_mini_batch_scope_scores_split_groups_against_the_whole_group():
    inp = make_batch(seed=3)
    whole, _, _ = NTHRWeight(NTHRConfig())(inp)

    def rows(sel):
        return LossInputs(inp.logprobs[sel], inp.old_logprobs[sel], inp.advantages[sel], inp.mask[sel],
                          group_ids=inp.group_ids[sel],
                          extras={**inp.extras, "old_hidden": inp.extras["old_hidden"][sel],
                                  "response_ids": inp.extras["response_ids"][sel]})

    part = NTHRWeight(NTHRConfig())
    part.scope = "mini_batch"
    part.prepare(inp)
    first, _, _ = part(rows(slice(0, 2)))  # group 0 is split: rows 0-1 here, row 2 in the next micro-batch
    second, _, _ = part(rows(slice(2, 8)))
    assert torch.allclose(torch.cat([first, second]), whole, atol=1e-12)


def test_composed_loss_scales_the_advantage():
    inp = make_batch(seed=4)
    alg = Algorithm(AlgorithmConfig(token_weights=[PartSpec("thr", THRConfig(strength=1.0))]))
    assert alg.needs >= {"old_hidden", "response_ids"}
    loss, metrics = alg.loss(inp)
    assert torch.isfinite(loss) and "thr/dominant_frac" in metrics
    loss.backward()
    assert torch.isfinite(inp.logprobs.grad).all()


def test_missing_extras_and_bad_config():
    inp = make_batch()
    bare = LossInputs(inp.logprobs, inp.old_logprobs, inp.advantages, inp.mask, group_ids=inp.group_ids)
    with pytest.raises(ValueError, match="response_ids"):
        THRWeight(THRConfig())(bare)
    with pytest.raises(ValueError, match="strength"):
        THRConfig(strength=1.5)
    with pytest.raises(ValueError, match="direction"):
        THRConfig(direction="sideways")
    with pytest.raises(ValueError, match="eta"):
        NTHRConfig(eta="half")


def test_empty_micro_batch():
    inp = make_batch()
    z = torch.zeros_like(inp.mask)
    empty = LossInputs(inp.logprobs, inp.old_logprobs, z, z, group_ids=inp.group_ids, extras=inp.extras)
    w, _, metrics = THRWeight(THRConfig())(empty)
    assert torch.equal(w, z) and metrics["thr/dominant_frac"] == 0.0
