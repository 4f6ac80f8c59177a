"""The critic core (creditrl/learner/critic.py): clipped value loss (verl `compute_value_loss` form), explained
variance, micro-batch losses summing to the mini-batch loss, and the config-time rules of `critic:`."""

import pytest
import torch

from creditrl.learner.critic import explained_variance, value_loss


def test_value_loss_is_half_max_of_clipped_and_unclipped_squared_error():
    v = torch.tensor([[0.0, 1.0, 2.0, 9.0]])
    old = torch.tensor([[0.5, 0.0, 2.2, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, m = value_loss(v, old, ret, mask, cliprange=0.5)
    clipped = torch.tensor([0.0, 0.5, 2.0])  # old +- 0.5: (0, 0.5), (-0.5, 0.5), (1.7, 2.7)
    e1 = (v[0, :3] - ret[0, :3]) ** 2  # 1, 0, 4
    e2 = (clipped - ret[0, :3]) ** 2  # 1, 0.25, 4
    assert loss.item() == pytest.approx(0.5 * torch.maximum(e1, e2).mean().item())
    assert m["critic/clipfrac"] == pytest.approx(1 / 3)
    unclipped, m0 = value_loss(v, old, ret, mask, cliprange=None)
    assert unclipped.item() == pytest.approx(0.5 * e1.mean().item()) and m0["critic/clipfrac"] == 0.0


def test_micro_batch_losses_sum_to_the_mini_batch_loss():
    gen = torch.Generator().manual_seed(0)
    v, old, ret = (torch.randn(6, 5, generator=gen) for _ in range(3))
    mask = (torch.rand(6, 5, generator=gen) > 0.3).float()
    whole, _ = value_loss(v, old, ret, mask, 0.2)
    n = mask.sum().item()
    parts = sum(value_loss(v[i:i + 2], old[i:i + 2], ret[i:i + 2], mask[i:i + 2], 0.2, n)[0] for i in (0, 2, 4))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_explained_variance():
    gen = torch.Generator().manual_seed(1)
    ret = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(4, 6)
    mask[0, 4:] = 0
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(ret, ret + 3.0, mask) == pytest.approx(1.0)  # a constant offset is not penalised
    assert explained_variance(ret, torch.zeros_like(ret), mask) == pytest.approx(0.0, abs=1e-4)
    r, vv = ret[mask > 0], (0.5 * ret)[mask > 0]
    want = 1 - (r - vv).var().item() / (r.var().item() + 1e-5)
    assert explained_variance(ret, 0.5 * ret, mask) == pytest.approx(want, rel=1e-12)
    assert explained_variance(torch.ones(2, 3), torch.rand(2, 3), torch.ones(2, 3)) <= 1.0  # constant returns: finite


@pytest.mark.parametrize("overrides,match", [
    (["algorithm.advantage=gae"], "needs a learned critic"),
    (["critic={}"], "does not use values"),
    (["algorithm.advantage=gae", "critic={}", "algorithm.token_weights=[{name: nthr}]"], "nthr"),
    (["algorithm.advantage=gae", "critic={}", "critic.lr=0"], "critic.lr"),
])
def test_critic_config_rules(overrides, match):
    from creditrl.config import load_config

    with pytest.raises(Exception, match=match):
        load_config("tiny_grpo", overrides)


def test_tiny_ppo_recipe_loads():
    from creditrl.config import load_config

    cfg = load_config("tiny_ppo")
    assert cfg.algorithm.advantage.name == "gae" and cfg.critic is not None


class _ConstShell:
    """A critic shell whose values are one learnable scalar per token position (no model), on the real core."""

    pad_id = 0
    pack_width = 0  # padded micro-batches (the Shell protocol)

    def __init__(self, T: int):
        self.v = torch.nn.Parameter(torch.zeros(T))
        self.steps: list[bool] = []

    def values(self, mb):
        return self.v[: mb.mask.shape[1]].expand_as(mb.mask) * mb.mask

    def backward(self, loss):
        loss.backward()

    def step(self, finite):
        ok = finite and self.v.grad is not None and bool(torch.isfinite(self.v.grad).all())
        self.v.grad = None
        self.steps.append(ok)
        return 1.0 if ok else None

    def set_train(self, mode):
        pass


def _batch(returns: torch.Tensor):
    from creditrl.learner.batch import RolloutBatch

    B, T = returns.shape
    mask = torch.ones(B, T)
    batch = RolloutBatch(prompt_ids=[[1, 2]] * B, response_ids=torch.full((B, T), 3), mask=mask,
                         rollout_logprobs=torch.zeros(B, T), rewards=torch.zeros(B), group_ids=torch.arange(B),
                         prompt_keys=[str(i) for i in range(B)], finished=torch.ones(B, dtype=torch.bool))
    batch.stats.update(old_values=torch.zeros(B, T), returns=returns)
    return batch


def test_non_finite_critic_steps_are_skipped_counted_and_stop_the_run_at_the_budget():
    from creditrl.learner import critic
    from creditrl.learner.dp_split import plan_step
    from creditrl.learner.health import TooManySkippedSteps

    shell, progress = _ConstShell(3), critic.CriticProgress(warmup_steps=0)
    good, bad = _batch(torch.ones(4, 3)), _batch(torch.full((4, 3), float("nan")))
    plans = plan_step([5] * 4, 2, 1, 64)  # 2 mini-batches of 2 rows: 2 critic steps per update

    def one(batch):
        part = critic.update(shell, batch, plans, ppo_epochs=1, cliprange=None)
        return critic.finish_update([part], 1e-3, batch, progress, budget=3)

    m = one(good)
    assert shell.steps == [True, True] and m["critic/skipped_steps_total"] == 0 and m["critic/value_loss"] > 0
    m = one(bad)  # 2 skipped in a row: under the budget of 3
    assert shell.steps[-2:] == [False, False] and m["critic/skipped_steps_total"] == 2
    assert progress.consecutive_skipped == 2
    # checked after each critic update (the driver's counters): 2 + 2 skips in a row >= 3
    with pytest.raises(TooManySkippedSteps, match="critic: 4 optimizer steps in a row") as err:
        one(bad)
    assert err.value.metrics["critic/skipped_steps_total"] == 4
    one_more = critic.CriticProgress(warmup_steps=0)
    one_more.consecutive_skipped = 5
    part = critic.CriticPart(applied=[True])
    assert one_more.record(part, budget=3) is None and one_more.consecutive_skipped == 0  # an applied step resets it
