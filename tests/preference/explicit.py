"""An independent float64 reference for preference training: per-pair losses and held-out metrics from the
models' full logits (no fused op, no micro-batching, no reference cache), written from the formulas of
docs/preference.md / algorithms-token-level.md §15."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from creditrl.models.build import load_causal_lm


def float64_model(path) -> torch.nn.Module:
    return load_causal_lm(str(path)).double().eval()


def response_logits(model, prompt_ids, response_ids) -> Tensor:
    """[n, V] float64 logits that predict the n response tokens (one unpadded sequence)."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    p = len(prompt_ids)
    return model(input_ids=ids).logits[0, p - 1 : p - 1 + len(response_ids)].double()


@dataclass
class Side:
    logratio: Tensor  # [n] ℓ_t − ℓ_ref,t (grad through ℓ_t)
    logp: Tensor  # [n] ℓ_t
    kl: Tensor  # [n] KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) over the full vocabulary
    ce_p: Tensor | None  # [n] cDPO p_CE,t


def side_stats(policy, reference, prompt_ids, response_ids, contrastive=None, beta_ce: float = 1.0) -> Side:
    y = torch.tensor(list(response_ids))[:, None]
    lp_all = F.log_softmax(response_logits(policy, prompt_ids, response_ids), -1)
    with torch.no_grad():
        ref_all = F.log_softmax(response_logits(reference, prompt_ids, response_ids), -1)
    logp, ref_logp = lp_all.gather(1, y)[:, 0], ref_all.gather(1, y)[:, 0]
    kl = (ref_all.exp() * (ref_all - lp_all)).sum(-1)
    ce_p = None
    if contrastive is not None:
        pos, neg = contrastive
        with torch.no_grad():
            z = ((1 + beta_ce) * response_logits(pos, prompt_ids, response_ids)
                 - beta_ce * response_logits(neg, prompt_ids, response_ids))
            ce_p = F.softmax(z, -1).gather(1, y)[:, 0]
    return Side(logp - ref_logp, logp, kl, ce_p)


def pair_losses(policy, reference, pairs, loss: str, beta: float, alpha: float = 0.5, contrastive=None) -> Tensor:
    """[P] per-pair losses (differentiable w.r.t. the policy):

        dpo    −log σ(β (M_w − M_l)),                  M = Σ_t (ℓ_t − ℓ_ref,t)
        tdpo1  −log σ(β [(M_w − M_l) − (D_l − D_w)]),  D = Σ_t KL_t
        tdpo2  −log σ(β [(M_w − M_l) − α (D_l − sg(D_w))])
        cdpo   −log σ(β [Σ Δ_w − Σ w_l Δ_l]),          w_l = 1 − p_CE (1 at the EOS), chosen weights 1
    """
    out = []
    for p in pairs:
        w = side_stats(policy, reference, p.prompt_ids, p.chosen_ids, contrastive)
        lo = side_stats(policy, reference, p.prompt_ids, p.rejected_ids, contrastive)
        if loss == "dpo":
            z = w.logratio.sum() - lo.logratio.sum()
        elif loss == "tdpo1":
            z = w.logratio.sum() - lo.logratio.sum() - (lo.kl.sum() - w.kl.sum())
        elif loss == "tdpo2":
            z = w.logratio.sum() - lo.logratio.sum() - alpha * (lo.kl.sum() - w.kl.sum().detach())
        elif loss == "cdpo":
            weight = 1.0 - lo.ce_p
            weight[-1] = 1.0
            z = w.logratio.sum() - (weight * lo.logratio).sum()
        else:
            raise ValueError(loss)
        out.append(-F.logsigmoid(beta * z))
    return torch.stack(out)


def loss_and_grad_norm(policy, reference, pairs, loss: str, beta: float, alpha: float = 0.5,
                       contrastive=None) -> tuple[float, float]:
    """(batch mean loss, norm of its gradient over every policy parameter)."""
    policy.zero_grad(set_to_none=True)
    mean = pair_losses(policy, reference, pairs, loss, beta, alpha, contrastive).mean()
    mean.backward()
    norm = torch.sqrt(sum((q.grad.double() ** 2).sum() for q in policy.parameters() if q.grad is not None))
    policy.zero_grad(set_to_none=True)
    return float(mean.detach()), float(norm)


@torch.no_grad()
def held_out_metrics(policy, reference, pairs) -> dict[str, float]:
    """eval/pref_acc, pref_margin and kl_per_token_{chosen,rejected} from the formulas."""
    acc = margin = 0.0
    kl = [0.0, 0.0]
    tokens = [0, 0]
    for p in pairs:
        sides = [side_stats(policy, reference, p.prompt_ids, r) for r in (p.chosen_ids, p.rejected_ids)]
        lp_w, lp_l = (float(s.logp.sum()) for s in sides)
        acc += float(lp_w > lp_l)
        margin += lp_w - lp_l
        for i, s in enumerate(sides):
            kl[i] += float(s.kl.sum())
            tokens[i] += len(s.kl)
    n = len(pairs)
    return {"eval/pref_acc": acc / n, "eval/pref_margin": margin / n,
            "eval/kl_per_token_chosen": kl[0] / tokens[0], "eval/kl_per_token_rejected": kl[1] / tokens[1]}
