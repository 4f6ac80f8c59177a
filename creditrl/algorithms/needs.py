"""What a composed algorithm needs from the learner, as one typed record checked when the algorithm is built.

Every part declares `needs`, a set of names (see `creditrl/algorithms/base.py`). `stat_request` turns the
union into a `StatRequest` that every learner (single-process or a DeepSpeed rank) reads to decide what to
compute, so a learner can never silently skip an input a part relies on. A name no learner can provide is a
config-time `ValueError` that names the part, the need and the names that exist.

    name                  computed by                                   reaches the part as
    "entropy"             the training forward (differentiable)         LossInputs.entropy
    "old_entropy"         the old-log-prob pass (always computed)       LossInputs.old_entropy
    "ref_logprobs"        the reference model, no grad                  LossInputs.ref_logprobs
    "rollout_logprobs"    the rollout engine                            LossInputs.rollout_logprobs
    "old_hidden"          the old pass's last hidden states [B, T, H]   extras old_hidden, lm_head_weight,
                                                                        temperature
    "response_ids"        the batch                                     extras response_ids [B, T]
    "old_<stat>"          the fused lm_head op in the old pass, with    extras old_<stat> [B, T]
                          the parts' `kernel_options` (e.g. Lp-Reg's
                          "old_proxy_logp" needs `lp_reg` options)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from creditrl.kernels.types import OPTIONAL_OUTPUTS, PROXY_OUTPUTS, REF_OUTPUTS

PLAIN_NEEDS = frozenset({"entropy", "old_entropy", "ref_logprobs", "rollout_logprobs", "old_hidden", "response_ids"})
# old-pass kernel outputs: name -> the kernel option that must be set for the kernel to produce it
OLD_KERNEL_STATS: dict[str, str | None] = {
    **{s: None for s in OPTIONAL_OUTPUTS}, **{s: "lp_reg" for s in PROXY_OUTPUTS}, **{s: "ref" for s in REF_OUTPUTS},
    "lse": None,
}


@dataclass(frozen=True)
class StatRequest:
    """The per-token statistics a learner must compute for one algorithm."""

    entropy: bool = False  # current-policy entropy in the training forward (differentiable)
    ref_logprobs: bool = False  # reference-model log-probs in the old pass
    old_hidden: bool = False  # keep the old pass's hidden states (THR / NTHR)
    response_ids: bool = False  # hand the sampled ids to the parts
    old_kernel_stats: tuple[str, ...] = ()  # extra fused-op outputs of the old pass, stored as old_<stat>
    kernel_options: Mapping = field(default_factory=dict)  # kwargs of linear_token_stats for the old pass

    @property
    def train_want(self) -> tuple[str, ...]:
        """Statistics of the training forward."""
        return ("logp", "entropy") if self.entropy else ("logp",)

    @property
    def old_want(self) -> tuple[str, ...]:
        """Statistics of the old-log-prob pass (entropy is always logged)."""
        return ("logp", "entropy", *self.old_kernel_stats)


def check_needs(part, needs: frozenset[str], kernel_options: Mapping) -> None:
    """Raise a ValueError naming `part` if it needs something no learner provides."""
    for name in sorted(needs):
        if name in PLAIN_NEEDS:
            continue
        stat = name[len("old_"):] if name.startswith("old_") else None
        if stat is None or stat not in OLD_KERNEL_STATS:
            known = sorted(PLAIN_NEEDS) + [f"old_{s}" for s in sorted(OLD_KERNEL_STATS)]
            raise ValueError(f"algorithm part {type(part).__name__} needs '{name}', which no learner computes. "
                             f"Known needs: {', '.join(known)}")
        option = OLD_KERNEL_STATS[stat]
        if option is not None and option not in kernel_options:
            raise ValueError(f"algorithm part {type(part).__name__} needs '{name}' from the fused lm_head op, "
                             f"which computes it only with the kernel option '{option}'; declare it in the part's "
                             f"kernel_options")


def stat_request(parts: list, kernel_options: Mapping, kl_to_reference: bool) -> StatRequest:
    """The checked `StatRequest` of a list of algorithm parts (see the module docstring)."""
    needs: set[str] = set()
    for p in parts:
        part_needs = frozenset(getattr(p, "needs", frozenset()))
        check_needs(p, part_needs, kernel_options)
        needs |= part_needs
    kernel_stats = tuple(sorted(n[len("old_"):] for n in needs if n.startswith("old_") and n not in PLAIN_NEEDS))
    return StatRequest(entropy="entropy" in needs, ref_logprobs=kl_to_reference or "ref_logprobs" in needs,
                       old_hidden="old_hidden" in needs, response_ids="response_ids" in needs,
                       old_kernel_stats=kernel_stats, kernel_options=dict(kernel_options))
