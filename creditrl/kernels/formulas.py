"""Row moments -> statistics, and statistics' upstream gradients -> per-row logit-gradient coefficients.

Shared by the chunked torch path and the Triton path, which differ only in how they compute the row moments
(whole-chunk reductions vs online accumulation over vocabulary tiles) and where they apply the coefficients.
All formulas are in shifted form (u = z - m, m = max_j z_j), spec kernels.md §4:

    A   = sum e^u              B   = sum e^u u              (A2, B2: the same with e^{2u})
    lse = m + log A            logp = z_y - lse             H = log A - B / A        E_p[u] = B / A
    sum_p2 = A2 / A^2          sum_p2_z = B2 / A^2 + m * sum_p2

Reference model (TDPO, kernels.md §6.4), r = softmax(z_r), u_r = z_r - m_r, both at temperature T:
    A_r = sum e^{u_r}   B_r = sum e^{u_r} u_r   D = sum e^{u_r} u
    KL(r || p) = E_r[log r] - E_r[log p] = B_r/A_r - log A_r - D/A_r + log A

Lp-Reg proxy (kernels.md §6.2, algorithms-token-level.md §12), rho = T / T_q, keep set K = {u >= delta}:
    A_q = sum_K e^{rho u}   B_q = sum_K e^{rho u} u   n_out = |V \\ K|
    proxy_log_mass = rho m + log A_q,  proxy_logp = rho u_y - log A_q (y in K, else -inf)
    KL(q || p) = (rho - 1) B_q / A_q - log A_q + log A   (= -log Z_K when T_q = T)

Gradient w.r.t. the raw logits a = T z (multiply-through of every output's upstream gradient):

    dA_j = p_j (c0 + c1 u_j + c2 p_j + c3 p_j u_j) + cy 1[j = y] + cq q_j 1[j in K] + cr r_j

with the per-row coefficients of `logit_grad_coefficients`. The terms, per output, in z (then divide by T):
    logp: 1[j=y] - p_j          entropy: -p_j (u_j - E_p[u])         lse: p_j
    sum_p2: 2 p_j (p_j - sum_p2)     sum_p2_z: p_j (2 p_j z_j - 2 sum_p2_z + p_j)
    proxy_kl: p_j - q_j (q detached)  ref_kl: p_j - r_j
and in zq = a / T_q (divide by T_q): proxy_log_mass: q_j 1[j in K];  proxy_logp: (1[j=y] - q_j) 1[y in K].
Using (u_j - E_p[u]) rather than (log p_j + H) avoids 0 * (-inf) when p_j underflows (VeOmni PR #720).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.kernels.types import AUX_OUTPUTS, DIFF_OUTPUTS, StatsPlan


@dataclass
class RowMoments:
    """Full-vocabulary reductions of one row of logits (all [N], compute dtype; see the module docstring)."""

    m: Tensor  # max_j z_j
    A: Tensor  # sum e^u
    B: Tensor  # sum e^u u
    z_target: Tensor  # z_y
    A2: Tensor | None = None  # sum e^{2u}
    B2: Tensor | None = None  # sum e^{2u} u
    argmax: Tensor | None = None  # int64
    z_min: Tensor | None = None  # min_j z_j (soft Lp-Reg filtering)
    A_th: Tensor | None = None  # sum e^{(T / T_th) u} (fixed-threshold Lp-Reg rule)
    m_ref: Tensor | None = None  # max_j z_r,j
    A_ref: Tensor | None = None  # sum e^{u_r}
    B_ref: Tensor | None = None  # sum e^{u_r} u_r
    D_ref: Tensor | None = None  # sum e^{u_r} u


@dataclass
class ProxyMoments:
    """Reductions over the Lp-Reg keep set K (all [N]); needs the row's m and threshold first."""

    A_q: Tensor  # sum_K e^{rho u}
    B_q: Tensor  # sum_K e^{rho u} u
    n_out: Tensor  # |V \ K| (float)


@dataclass
class LogitGradCoefficients:
    """Per-row coefficients of the logit gradient dA_j (module docstring); all [N], already divided by T / T_q."""

    c0: Tensor  # p
    c1: Tensor  # p u
    c2: Tensor  # p^2
    c3: Tensor  # p^2 u
    cy: Tensor  # 1[j = y]
    cq: Tensor  # q 1[j in K]
    cr: Tensor  # r


def proxy_threshold(mom: RowMoments, plan: StatsPlan) -> Tensor:
    """Per-row keep threshold delta in shifted-logit units: j in K  <=>  u_j >= delta.  [N]

    minp:  pi_j >= kappa max pi  <=>  a_j / T_th >= max a / T_th + ln kappa  <=>  u_j >= (T_th / T) ln kappa.
    fixed: pi_j >= tau           <=>  (T / T_th) u_j - log A_th >= ln tau   <=>  u_j >= (T_th / T)(ln tau + log A_th).
    """
    cfg = plan.lp_reg
    assert cfg is not None
    scale = cfg.threshold_temperature / plan.temperature
    log_t = math.log(cfg.threshold)
    if cfg.rule == "minp":
        return torch.full_like(mom.m, scale * log_t)
    assert mom.A_th is not None
    return scale * (log_t + torch.log(mom.A_th))


def finalize(mom: RowMoments, pmom: ProxyMoments | None, plan: StatsPlan) -> dict[str, Tensor]:
    """All statistics of the plan from the row moments (module docstring). Values only; no autograd here."""
    log_a = torch.log(mom.A)
    lse = mom.m + log_a
    out: dict[str, Tensor] = {
        "logp": mom.z_target - lse,
        "entropy": log_a - mom.B / mom.A,
        "lse": lse,
    }
    if plan.want_sum_p2:
        a_sq = mom.A * mom.A
        out["sum_p2"] = mom.A2 / a_sq
        out["sum_p2_z"] = mom.B2 / a_sq + mom.m * out["sum_p2"]
    if plan.want_max:
        out["max_logit"] = mom.m.clone()
        out["argmax"] = mom.argmax
    if plan.has_ref:
        out["ref_kl"] = (mom.B_ref - mom.D_ref) / mom.A_ref - torch.log(mom.A_ref) + log_a
    if plan.lp_reg is not None:
        assert pmom is not None
        out.update(_finalize_proxy(mom, pmom, plan, log_a))
    return out


def _finalize_proxy(mom: RowMoments, pmom: ProxyMoments, plan: StatsPlan, log_a: Tensor) -> dict[str, Tensor]:
    rho = plan.temperature / plan.proxy_temperature
    delta = proxy_threshold(mom, plan)
    u_y = mom.z_target - mom.m
    in_k = u_y >= delta
    if plan.lp_reg.soft:
        # filtered logits take the row minimum: one extra e^{rho u_min} per filtered column
        log_norm = torch.log(pmom.A_q + pmom.n_out * torch.exp(rho * (mom.z_min - mom.m)))
        u_sel = torch.where(in_k, u_y, mom.z_min - mom.m)
        return {
            "proxy_log_mass": rho * mom.m + log_norm,
            "proxy_logp": rho * u_sel - log_norm,
            "target_in_proxy": in_k,
        }
    log_aq = torch.log(pmom.A_q)
    return {
        "proxy_log_mass": rho * mom.m + log_aq,
        "proxy_logp": torch.where(in_k, rho * u_y - log_aq, torch.full_like(u_y, -math.inf)),
        "target_in_proxy": in_k,
        "proxy_kl": (rho - 1.0) * pmom.B_q / pmom.A_q - log_aq + log_a,
    }


def _grad_or_zero(grads: dict[str, Tensor | None], name: str, like: Tensor) -> Tensor:
    g = grads.get(name)
    return torch.zeros_like(like) if g is None else g.to(like.dtype)


def logit_grad_coefficients(
    grads: dict[str, Tensor | None], mom: RowMoments, pmom: ProxyMoments | None, plan: StatsPlan
) -> LogitGradCoefficients:
    """Fold the upstream gradients of every differentiable output into the per-row coefficients of dA_j.

    `grads[name]` is dL/d(output) [N] or None (zero). See the module docstring for the per-output terms; with
    E = E_p[u], P2 = sum_p2, S2u = B2 / A^2 (= sum p^2 u), z_j = u_j + m:
        c0 = [-g + h E + l - 2 s P2 - t (2 S2u + 2 m P2) + k + r] / T      c1 = -h / T
        c2 = [2 s + t (1 + 2 m)] / T                                      c3 = 2 t / T
        cy = g / T + v 1[y in K] / T_q      cq = -k / T + (w - v 1[y in K]) / T_q      cr = -r / T
    for g, h, l, s, t, k, r, w, v = dL/d(logp, entropy, lse, sum_p2, sum_p2_z, proxy_kl, ref_kl,
    proxy_log_mass, proxy_logp).
    """
    ref = mom.m
    g = _grad_or_zero(grads, "logp", ref)
    h = _grad_or_zero(grads, "entropy", ref)
    l = _grad_or_zero(grads, "lse", ref)
    s = _grad_or_zero(grads, "sum_p2", ref)
    t = _grad_or_zero(grads, "sum_p2_z", ref)
    k = _grad_or_zero(grads, "proxy_kl", ref)
    r = _grad_or_zero(grads, "ref_kl", ref)
    w = _grad_or_zero(grads, "proxy_log_mass", ref)
    v = _grad_or_zero(grads, "proxy_logp", ref)

    inv_t = 1.0 / plan.temperature
    e_u = mom.B / mom.A
    c0 = -g + h * e_u + l + k + r
    c2 = torch.zeros_like(ref)
    c3 = torch.zeros_like(ref)
    if plan.want_sum_p2:
        a_sq = mom.A * mom.A
        p2 = mom.A2 / a_sq
        s2u = mom.B2 / a_sq
        c0 = c0 - 2.0 * s * p2 - t * (2.0 * s2u + 2.0 * mom.m * p2)
        c2 = 2.0 * s + t * (1.0 + 2.0 * mom.m)
        c3 = 2.0 * t
    cy = g * inv_t
    cq = -k * inv_t
    if plan.proxy_grad:
        inv_tq = 1.0 / plan.proxy_temperature
        in_k = ((mom.z_target - mom.m) >= proxy_threshold(mom, plan)).to(ref.dtype)
        cy = cy + v * in_k * inv_tq
        cq = cq + (w - v * in_k) * inv_tq
    return LogitGradCoefficients(
        c0=c0 * inv_t, c1=-h * inv_t, c2=c2 * inv_t, c3=c3 * inv_t, cy=cy, cq=cq, cr=-r * inv_t
    )


# ---- the autograd Functions' shared packing (chunked and Triton backends) ----------------------------------------
def pack_outputs(ctx, stats: dict[str, Tensor], plan: StatsPlan, empty: Tensor) -> tuple[Tensor, ...]:
    """The forward's return value in the fixed order DIFF_OUTPUTS + AUX_OUTPUTS (absent ones as `empty`).

    Marks the aux outputs non-differentiable, and the soft Lp-Reg proxy too (detached by definition,
    types.LpRegProxy); gradients of unused outputs arrive as None (`set_materialize_grads(False)`).
    """
    diff = tuple(stats.get(name, empty) for name in DIFF_OUTPUTS)
    aux = tuple(stats.get(name, empty) for name in AUX_OUTPUTS)
    soft_proxy = plan.lp_reg is not None and plan.lp_reg.soft
    ctx.mark_non_differentiable(*aux, *(diff[DIFF_OUTPUTS.index(k)] for k in ("proxy_log_mass", "proxy_logp")
                                        if soft_proxy))
    ctx.set_materialize_grads(False)
    return diff + aux


def output_grads(grad_outputs: tuple) -> dict[str, Tensor]:
    """The backward's incoming gradients by output name, dropping the absent and empty ones."""
    return {name: g for name, g in zip(DIFF_OUTPUTS, grad_outputs) if g is not None and g.numel() > 0}
