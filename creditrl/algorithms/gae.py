"""GAE: per-token advantages from a learned critic (PPO, Schulman et al. 2016, arXiv 1506.02438), verl semantics.

verl `compute_gae_advantage_return` (verl/trainer/ppo/core_algos.py, `adv_estimator: gae`), per response, scanned
right to left over the response tokens t = T-1 .. 0 with the mask m:

    r_t       per-token reward: `token_rewards` when given (e.g. the KL-in-reward penalty of kl.placement:
              reward, -beta KL_t on every token), else 0 except the sequence reward on the last valid token
    V_t       the critic's value of the state that emits token t (the critic's old-pass values, no grad)
    delta_t = r_t + gamma V_next - V_t                  V_next = V of the next VALID token, 0 after the last one
    A_t     = delta_t + gamma lam A_next                A_next = A of the next valid token, 0 after the last one
    R_t     = A_t + V_t                                 the critic's regression target (returns, NOT whitened)
    A       = masked_whiten(A) * m                      (A - mean_m(A)) / sqrt(var_m(A) + 1e-8), unbiased var,
                                                        over every valid token of the step batch (verl
                                                        `masked_whiten`, shift_mean=True)

Masked positions are skipped: V_next and A_next are carried unchanged through them (verl: "skip values and TD-error
on observation tokens"); for right-padded single-turn responses this is exactly "V beyond the last valid token = 0".
Defaults gamma = lam = 1.0 are verl's (`algorithm.gamma` / `algorithm.lam`); with lam = 1 the advantage is the
Monte-Carlo return minus V_t (the critic is a per-token baseline), lam < 1 (e.g. 0.95, the usual RLHF setting of
Ouyang et al. 2022 / TRL's PPOTrainer) bootstraps from the critic: lower variance, biased while the critic is wrong.

Outputs are multiplied by the mask (verl leaves whitened garbage at padding). The returns of the latest call are
kept in `GAEAdvantage.returns` for the critic update of the same step (creditrl/learner/critic.py); they are not
cross-step state and are not checkpointed. docs/algorithms.md "PPO with a learned critic" lists what composes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, Metrics, stateless
from creditrl.algorithms.registry import ADVANTAGES
from creditrl.algorithms.reinforce_pp import masked_whiten, reward_on_last_token


def gae_advantages_returns(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                           lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """(whitened advantages, returns), both [B, T] and multiplied by the mask; computed in float64.

    token_rewards, values, mask: [B, T] response-aligned (see the module docstring for the recursion).
    """
    r = token_rewards.to(torch.float64)
    v = values.to(torch.float64)
    m = mask.to(torch.float64)
    B, T = m.shape
    next_value = torch.zeros(B, dtype=torch.float64)
    next_adv = torch.zeros(B, dtype=torch.float64)
    adv = torch.zeros((B, T), dtype=torch.float64)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * next_adv
        next_value = m[:, t] * v[:, t] + (1.0 - m[:, t]) * next_value
        next_adv = m[:, t] * a_t + (1.0 - m[:, t]) * next_adv
        adv[:, t] = next_adv
    returns = (adv + v) * m
    whitened = masked_whiten(adv, m) * m
    return whitened.to(mask.dtype), returns.to(mask.dtype)


@dataclass
class GAEConfig:
    gamma: float = 1.0  # discount of future rewards and values (verl algorithm.gamma)
    lam: float = 1.0  # GAE lambda: 1 = Monte-Carlo return - V, 0 = one-step TD error (verl algorithm.lam)

    def __post_init__(self):
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"algorithm.advantage gae.{key} must be in [0, 1] (got {getattr(self, key)}). "
                                 f"Fix: e.g. 1.0 (verl's default) or 0.95")


@ADVANTAGES.register("gae", GAEConfig)
@stateless
class GAEAdvantage:
    """GAE advantages and returns from the critic's values (needs a `critic:` section in the recipe)."""

    needs = frozenset()  # the values come from the critic (creditrl/learner/critic.py), not the policy learner

    def __init__(self, cfg: GAEConfig):
        self.cfg = cfg
        self.returns: Tensor | None = None  # [B, T] R_t of the latest call: the critic's targets

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        if inputs.values is None:
            raise ValueError("algorithm.advantage gae needs the critic's values (AdvantageInputs.values): the "
                             "recipe needs a `critic:` section")
        token_rewards = inputs.token_rewards
        if token_rewards is None:
            token_rewards = reward_on_last_token(inputs.rewards, inputs.mask)
        adv, returns = gae_advantages_returns(token_rewards, inputs.values, inputs.mask, self.cfg.gamma,
                                              self.cfg.lam)
        self.returns = returns
        m = inputs.mask.to(torch.float64)
        n = m.sum().clamp_min(1.0)
        return adv, {"critic/returns_mean": float((returns.double() * m).sum() / n)}
