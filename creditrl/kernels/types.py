"""Public types of the lm_head statistics op: the output record and the Lp-Reg proxy settings.

Notation used throughout `creditrl.kernels` (spec kernels.md §4):

    a = hidden @ weight.T          raw logits                 [N, V]
    z = a / T                      temperature-scaled logits  [N, V]
    p = softmax(z)                 the policy distribution
    m = max_j z_j,  u = z - m      shifted logits (u <= 0)
    A = sum_j e^u,  lse = m + log A
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Mapping

from torch import Tensor

# Outputs that carry gradients, in the fixed order used by the autograd Functions.
DIFF_OUTPUTS: tuple[str, ...] = (
    "logp", "entropy", "lse", "sum_p2", "sum_p2_z", "proxy_log_mass", "proxy_logp", "proxy_kl", "ref_kl",
)
# Outputs without gradients (metrics and masks).
AUX_OUTPUTS: tuple[str, ...] = ("max_logit", "argmax", "target_in_proxy")
# Always computed (they cost nothing beyond the logp sweep).
CORE_OUTPUTS: tuple[str, ...] = ("logp", "entropy", "lse")
# Computed only when named in `want`.
OPTIONAL_OUTPUTS: tuple[str, ...] = ("sum_p2", "sum_p2_z", "max_logit", "argmax")
# Computed whenever `lp_reg` is given (proxy_kl only with hard filtering).
PROXY_OUTPUTS: tuple[str, ...] = ("proxy_log_mass", "proxy_logp", "target_in_proxy", "proxy_kl")
# Computed whenever `ref` is given.
REF_OUTPUTS: tuple[str, ...] = ("ref_kl",)
ALL_OUTPUTS: tuple[str, ...] = DIFF_OUTPUTS + AUX_OUTPUTS


@dataclass
class TokenStats:
    """Per-token statistics of `softmax(hidden @ weight.T / T)`, fp32 `[N]` tensors (None when not computed).

    logp            log p(y)                                  always; differentiable
    entropy         H = lse - E_p[z]                          always; differentiable
    lse             log sum_j e^{z_j}                         always; differentiable
    sum_p2          sum_j p_j^2                               want "sum_p2"; differentiable
    sum_p2_z        sum_j p_j^2 z_j                           want "sum_p2_z"; differentiable (STEER exact variant)
    max_logit       max_j z_j                                 want "max_logit"; no grad
    argmax          argmax_j z_j (int64)                      want "argmax"; no grad
    proxy_log_mass  log of the proxy normaliser at T_q (Lp-Reg)        lp_reg; differentiable (hard filtering)
    proxy_logp      log q(y) of the Lp-Reg proxy, -inf if y is filtered lp_reg; differentiable (hard filtering)
    target_in_proxy y survived the min-p / fixed filter (bool)         lp_reg; no grad
    proxy_kl        KL(q || p) over the full vocabulary, q detached     lp_reg with hard filtering; differentiable
    ref_kl          KL(pi_ref || pi_theta) over the full vocabulary     ref; differentiable w.r.t. the policy only

    Positions whose target equals `ignore_index` hold 0 (False for `target_in_proxy`) and get no gradient.
    """

    logp: Tensor
    entropy: Tensor
    lse: Tensor
    sum_p2: Tensor | None = None
    sum_p2_z: Tensor | None = None
    max_logit: Tensor | None = None
    argmax: Tensor | None = None
    proxy_log_mass: Tensor | None = None
    proxy_logp: Tensor | None = None
    target_in_proxy: Tensor | None = None
    proxy_kl: Tensor | None = None
    ref_kl: Tensor | None = None

    def as_dict(self) -> dict[str, Tensor]:
        """The computed statistics by name (None entries dropped)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class LpRegProxy:
    """How the Lp-Reg proxy distribution q is built from the same logits (algorithms-token-level.md §12.1).

    Keep set, on the softmax at `threshold_temperature` T_th of the raw logits a (reference: T_th = 1):
        rule "minp":  K = {j : pi_j >= kappa * max_u pi_u}  <=>  u_j >= (T_th / T) * ln(kappa)
        rule "fixed": K = {j : pi_j >= tau}                  <=>  u_j >= (T_th / T) * (ln(tau) + log A_th)
    with u = z - max(z) and A_th = sum_j exp((T / T_th) u_j).

    Proxy at temperature T_q (None = the op's temperature T), with zq = a / T_q:
        hard: q_j = 1[j in K] e^{zq_j} / sum_{K} e^{zq}                (reference: filtered logits = -1e4)
        soft: filtered logits are replaced by the row minimum before the softmax (reference `minp_soft`).

    Soft filtering returns detached proxy statistics (the reference detaches the proxy, and the row-minimum
    substitution has no useful gradient); `proxy_kl` is only defined for hard filtering (kernels.md §6.2).
    """

    threshold: float = 0.02  # kappa (minp, relative to the max probability) or tau (fixed)
    rule: Literal["minp", "fixed"] = "minp"
    threshold_temperature: float = 1.0
    proxy_temperature: float | None = None
    soft: bool = False

    def __post_init__(self) -> None:
        if self.rule not in ("minp", "fixed"):
            raise ValueError(f"lp_reg rule must be 'minp' or 'fixed', got {self.rule!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"lp_reg threshold must be in (0, 1], got {self.threshold}")
        if self.threshold_temperature <= 0:
            raise ValueError(f"lp_reg threshold_temperature must be > 0, got {self.threshold_temperature}")
        if self.proxy_temperature is not None and self.proxy_temperature <= 0:
            raise ValueError(f"lp_reg proxy_temperature must be > 0, got {self.proxy_temperature}")

    @classmethod
    def coerce(cls, value: "LpRegProxy | Mapping | None") -> "LpRegProxy | None":
        """Accept an LpRegProxy, a mapping of its fields (from a config), or None."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise TypeError(f"lp_reg must be an LpRegProxy, a mapping or None, got {type(value).__name__}")


@dataclass(frozen=True)
class StatsPlan:
    """Static description of one call: which statistics to compute and the temperatures involved.

    Backends receive this instead of the raw `want` tuple; `creditrl.kernels.dispatch.make_plan` builds it.
    """

    temperature: float
    want_sum_p2: bool = False  # sum_p2 and/or sum_p2_z
    want_max: bool = False  # max_logit and/or argmax
    lp_reg: LpRegProxy | None = None
    has_ref: bool = False

    @property
    def proxy_temperature(self) -> float:
        assert self.lp_reg is not None
        return self.lp_reg.proxy_temperature if self.lp_reg.proxy_temperature is not None else self.temperature

    def output_names(self) -> tuple[str, ...]:
        """Names of the statistics this plan computes."""
        names = list(CORE_OUTPUTS)
        if self.want_sum_p2:
            names += ["sum_p2", "sum_p2_z"]
        if self.want_max:
            names += ["max_logit", "argmax"]
        if self.lp_reg is not None:
            names += ["proxy_log_mass", "proxy_logp", "target_in_proxy"] + ([] if self.lp_reg.soft else ["proxy_kl"])
        if self.has_ref:
            names.append("ref_kl")
        return tuple(names)

    @property
    def proxy_grad(self) -> bool:
        """Whether the proxy statistics are differentiable (hard filtering only)."""
        return self.lp_reg is not None and not self.lp_reg.soft
