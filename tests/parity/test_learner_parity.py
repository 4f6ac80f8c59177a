"""Learner parity on a fixed batch: the single-process `LocalLearner` and a 2-rank DeepSpeed ZeRO-2
`LearnerGroup` started from the same weights run the loop's learner stages (`creditrl.trainer.loop.learn`:
old/ref statistics, `Algorithm.advantages`, the update) on the same `RolloutBatch`, for every RL recipe, and
agree on the metric keys, the loss, the gradient norm, every per-part metric and the updated weights.

The batch (no rollout randomness left once built): 4 prompts (lengths 4 and 5) x 4 samples from one seeded HF
generation of the tiny model, responses cut to 1-6 tokens, rewards drawn with a fixed seed so that every group
has both a 1 and a 0 (non-zero advantages; THR/NTHR need mixed groups), and N(0, 0.5) noise on the sampler
log-probs so TIS / IcePop / the mismatch metrics are non-trivial. 2 mini-batches (2 optimizer steps, lr 1e-3,
no warm-up), so the second mini-batch runs on weights the first step changed on each backend.

Micro-batches. `token_stat_scope: micro_batch` parts (STEER, HAPO, 80/20, Clip-Cov, KL-Cov in their recipes)
take their statistics per micro-batch per rank, like the references; and every per-part metric is reduced as a
token-weighted mean of micro-batch values, which equals the full-batch value only for token means over the whole
mask (not for maxima, minima or means over a sub-mask: `thr/value_max`, `tis/ratio_max`, `nthr/eta_mean`, ...).
Both are functions of the micro-batch partition, which differs between one process and 2 ranks by design. So:

* `test_learner_parity` (every recipe, every metric): one row per micro-batch
  (`train.micro_batch_tokens_per_worker=1`): the one process and the two ranks then see the same micro-batches,
  dealt differently; every statistic and metric is defined identically on both.
* `test_learner_parity_multi_row` (the recipes none of whose parts is micro-batch-scoped): up to 2 rows per
  micro-batch, different paddings per rank; loss, gradient norm, old-pass / advantage metrics and weights.

Tolerance (the same for every metric): |ray - local| <= RTOL * max(|ray|, |local|) + ATOL, RTOL = 1e-4,
ATOL = 1e-6. Justification, measured on this batch for all 23 recipes (2 cores, torch 2.13 CPU):
* the first mini-batch starts from bit-identical weights; the backends differ only in fp32 summation order
  (gradient accumulation over micro-batches vs. per rank + all-reduce, DeepSpeed's flat-buffer norm and Adam,
  1 torch thread on a rank vs 2 in the test process) and, multi-row, in padding. Noise of that kind, measured on
  the local learner alone by running the same plan with the micro-batches in reverse order
  (`test_update_is_invariant_to_micro_batch_order`): <= 7e-6 relative (`steer/omega_mean`, a mean of values of
  both signs; losses <= 5e-6), i.e. <= 0.05 of the tolerance.
* local vs Ray: <= 2.9e-5 relative (`steer/omega_mean`, |diff| 1e-7), losses <= 1.8e-5 (`tiny_minpro`), grad
  norms <= 1e-6, one-row; <= 5e-6 multi-row. The largest measured gap is 0.14 of the tolerance.
* what the tolerance must catch (checked by breaking the code): a missing world-size factor in the DeepSpeed
  backward halves the gradient norm (grpo: 21.6 vs 10.8); the lm_head going stale between mini-batches
  (LocalLearner used a live view of it, fixed to a copy) moved `thr/tau_mean` 5151 -> 8927 and
  `nthr/score_neg_mean` 143 -> 432; THR deciding a tie at its threshold by fp32 noise (fixed: TIE_RTOL in
  thr.py) moved the multi-row loss by 3.4%.
Weights: Adam's first step is lr * g / (|g| + eps) ~ +-lr, so entrywise differences hide scale errors; compared
is the whole update, ||dW_ray - dW_local|| / ||dW_local|| <= 1e-3 (measured <= 3.3e-5; an update of the wrong
direction, a skipped or a duplicated step is O(1)). The gradient norm is checked separately because clipping
(max_grad_norm 1) and Adam make the update nearly blind to the gradient's scale.

The DeepSpeed ranks build their reference model at start-up only if the start-up recipe's algorithm needs one,
so one group, started with a KL recipe, serves every recipe (the algorithm travels with each call); before each
recipe it is reset to its start-up checkpoint (weights, ZeRO optimizer and scheduler state).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from creditrl.algorithms import Algorithm
from creditrl.config import load_config
from creditrl.config.loader import RECIPES_DIR
from tests.parity.conftest import CRITIC_RECIPES, PREFERENCE_RECIPES, RAY_VARIANTS, RL_RECIPES, sliced

RTOL, ATOL = 1e-4, 1e-6
UPDATE_RTOL = 1e-3
TOTAL_STEPS = 10  # optimizer steps the schedule is built for (constant lr: only bookkeeping)

LEARNER = ("train.global_batch_prompts=4", "rollout.n_samples=4", "train.mini_batch_prompts=2", "train.ppo_epochs=1",
           "train.lr=1e-3", "train.warmup_steps=0", "train.lr_schedule=constant", "rollout.max_new_tokens=6",
           "resources.call_timeout_s=300")
# learner ranks only: the rollout slot the placement reserves is never used; 0.25 CPU each, so the two groups of
# this module fit the 2-CPU local Ray instance side by side
RAY_LEARNER = ("resources.backend=ray", "resources.learner_ranks=2", "resources.zero_stage=2",
               "resources.rollout_actors=1", "resources.cpus_per_actor=0.25")
ONE_ROW, MULTI_ROW = 1, 24  # micro_batch_tokens_per_worker: a row is 5-11 tokens
GROUP_RECIPE = "tiny_nthr"  # KL to the reference: the ranks build a reference model

# Default suite: one recipe per token-level part on Ray (STEER, DCPO, THR, NTHR, Lp-Reg, HAPO, 80/20 high-entropy,
# composed, TIS, IcePop) plus the KL / reference recipes (KL in the loss, KL in the reward) and plain GRPO.
DEFAULT = {"tiny_steer", "tiny_dcpo", "tiny_thr", "tiny_nthr", "tiny_lp_reg", "tiny_hapo", "tiny_high_entropy",
           "tiny_composed", "tiny_tis", "tiny_icepop", "tiny_reinforce_pp", "tiny_reinforce_pp_baseline", "tiny_grpo",
           "tiny_gmpo", "tiny_token_sum"}
DEFAULT_MULTI_ROW = {"tiny_grpo", "tiny_lp_reg", "tiny_composed", "tiny_nthr", "tiny_dr_grpo", "tiny_gspo"}


def test_recipe_list_is_complete():
    """RL_RECIPES is every tiny recipe but the preference ones, the Ray variants and the local-only critic recipes
    (a new recipe joins the matrix)."""
    found = {p.stem for p in Path(RECIPES_DIR).glob("tiny_*.yaml")}
    assert found - set(PREFERENCE_RECIPES) - set(RAY_VARIANTS) - set(CRITIC_RECIPES) == set(RL_RECIPES)
    assert len(RL_RECIPES) == 30 and CRITIC_RECIPES == ("tiny_ppo",)


def _micro_batch_scoped(recipe: str) -> list[str]:
    """The parts of a recipe whose statistics are taken per micro-batch (token_stat_scope micro_batch)."""
    alg = Algorithm(load_config(recipe).algorithm)
    parts = [alg.policy_loss, *alg.token_weights, *alg.regularizers]
    return [type(p).__name__ for p in parts if getattr(p, "scope", None) == "micro_batch"]


PARTITION_FREE = [r for r in RL_RECIPES if not _micro_batch_scoped(r)]


def _cfg(tiny_files, model: Path, recipe: str, budget: int, *extra: str):
    return load_config(recipe, [f"model.path={model}", f"data.train_files=[{tiny_files.train_file}]",
                                f"data.eval_files=[{tiny_files.eval_file}]", "logging.progress=false", *LEARNER,
                                f"train.micro_batch_tokens_per_worker={budget}", *extra])


def _learner_side(cfg) -> tuple:
    """What the learner group fixes at start-up besides the algorithm; must match the recipe under test."""
    train = replace(cfg.train, dynamic_sampling=False, dynamic_sampling_max_rounds=3)  # rollout-side settings
    return cfg.seed, cfg.model, train, cfg.rollout.temperature, cfg.rollout.n_samples, cfg.rollout.max_new_tokens


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(sharp_model):
    from creditrl.models.build import load_tokenizer

    return load_tokenizer(str(sharp_model))


@pytest.fixture(scope="module")
def fixed_batch(tiny_files, sharp_model, tokenizer):
    """The RolloutBatch every comparison starts from (see the module docstring)."""
    from creditrl.data import load_prompt_datasets
    from creditrl.models.build import build_policy
    from creditrl.rollout.base import RolloutOutput, SamplingParams
    from creditrl.rollout.hf_engine import HFGenerateEngine
    from creditrl.trainer.loop import build_batch

    cfg = _cfg(tiny_files, sharp_model, "tiny_grpo", ONE_ROW)
    train, _ = load_prompt_datasets(cfg.data, tokenizer, cfg.seed)
    by_len: dict[int, list] = {}
    for i in range(200):
        by_len.setdefault(len(train[i].prompt_ids), []).append(train[i])
    assert len(by_len) >= 2, "the task should have prompts of two lengths"
    short, long_ = sorted(by_len)[:2]
    prompts = [by_len[long_][0], by_len[short][0], by_len[long_][1], by_len[short][1]]
    engine = HFGenerateEngine(build_policy(cfg.model, trainable=False), tokenizer.pad_token_id,
                              tokenizer.eos_token_id)
    out = engine.generate([list(p.prompt_ids) for p in prompts], SamplingParams(4, 1.0, 1.0, 6, seed=1))
    cut = [min(len(r), 1 + (5 * j) % 6) for j, r in enumerate(out.response_ids)]  # lengths 1..6
    out = RolloutOutput(out.prompt_ids, [r[:n] for r, n in zip(out.response_ids, cut)],
                        [lp[:n] for lp, n in zip(out.logprobs, cut)], [False] * len(out), out.prompt_index)
    g = torch.Generator().manual_seed(1234)
    scores: list[float] = []
    for _ in prompts:
        group = torch.tensor([1.0, 0.0] + torch.randint(0, 2, (2,), generator=g).float().tolist())
        scores += group[torch.randperm(4, generator=g)].tolist()
    batch = build_batch(out, prompts, scores, tokenizer.pad_token_id, group_offset=0,
                        components=[[s, 1.0 - s] for s in scores], weights=[1.0, 0.0])  # a second, unweighted fn
    batch.rollout_logprobs = (batch.rollout_logprobs + 0.5 * torch.randn(batch.mask.shape, generator=g)) * batch.mask
    assert len(batch) == 16 and len(set(batch.response_lengths.tolist())) >= 5
    return batch


@dataclass
class Group:
    group: object
    cfg: object
    init_dir: Path
    budget: int


def _start_group(tiny_files, sharp_model, tokenizer, budget: int, root: Path):
    from creditrl.distributed.learner_group import LearnerGroup
    from creditrl.distributed.placement import make_placement

    cfg = _cfg(tiny_files, sharp_model, GROUP_RECIPE, budget, *RAY_LEARNER)
    assert Algorithm(cfg.algorithm).stats.ref_logprobs, "the group recipe must need the reference model"
    placement = make_placement(cfg.resources, 120)
    group = LearnerGroup(cfg, TOTAL_STEPS, tokenizer.pad_token_id, placement.learner)
    init_dir = root / f"init_{budget}"
    group.save(init_dir)  # reset point: weights, ZeRO optimizer and scheduler state
    return group, placement, Group(group, cfg, init_dir, budget)


def _group_fixture(budget: int):
    """A module-scoped fixture: a started LearnerGroup with micro-batch budget `budget` (shut down after)."""

    @pytest.fixture(scope="module")
    def fixture(local_ray, tiny_files, sharp_model, tokenizer, tmp_path_factory):
        group, placement, g = _start_group(tiny_files, sharp_model, tokenizer, budget, tmp_path_factory.mktemp("grp"))
        yield g
        group.shutdown()
        placement.remove()

    return fixture


one_row_group = _group_fixture(ONE_ROW)
multi_row_group = _group_fixture(MULTI_ROW)


# ---- one comparison ------------------------------------------------------------------------------------------------
@dataclass
class Side:
    metrics: dict
    batch: object
    weights: dict


def _run_both(recipe: str, g: Group, tiny_files, sharp_model, tokenizer, batch):
    """(initial weights, local side, Ray side) of the loop's learner stages on `batch`."""
    from creditrl.learner.local import LocalLearner
    from creditrl.trainer.loop import learn

    cfg = _cfg(tiny_files, sharp_model, recipe, g.budget)
    assert _learner_side(cfg) == _learner_side(g.cfg), f"{recipe} needs its own learner group"
    g.group.load(g.init_dir)
    alg_local, alg_ray = Algorithm(cfg.algorithm), Algorithm(cfg.algorithm)
    local = LocalLearner(cfg, alg_local, TOTAL_STEPS, tokenizer.pad_token_id)
    w0 = {n: t.clone() for n, t in local.named_weights()}
    assert all(torch.equal(w0[n], t) for n, t in g.group.named_weights()), "the group did not reset"
    b_local, b_ray = copy.deepcopy(batch), copy.deepcopy(batch)
    m_local = learn(b_local, local, alg_local, {})
    m_ray = learn(b_ray, g.group, alg_ray, {})
    return w0, Side(m_local, b_local, dict(local.named_weights())), Side(m_ray, b_ray, dict(g.group.named_weights()))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * max(abs(a), abs(b)) + ATOL


def _update_gap(w0: dict, local: dict, ray: dict) -> tuple[float, float]:
    """(||dW_ray - dW_local|| / ||dW_local||, ||dW_local||) over every parameter."""
    d_local = torch.cat([(local[n] - w0[n]).flatten().double() for n in w0])
    d_ray = torch.cat([(ray[n] - w0[n]).flatten().double() for n in w0])
    return ((d_ray - d_local).norm() / d_local.norm()).item(), d_local.norm().item()


def _assert_common(recipe: str, w0, local: Side, ray: Side):
    assert set(local.metrics) == set(ray.metrics), (set(local.metrics) ^ set(ray.metrics))
    bad = {k: v for side in (local, ray) for k, v in side.metrics.items() if not math.isfinite(v)}
    assert not bad, f"{recipe}: non-finite metrics {bad}"
    # the comparison is not vacuous: non-zero advantages, a real update on both sides, no skipped step
    assert local.batch.advantages.abs().sum() > 0
    assert local.metrics["actor/grad_norm"] > 0 and local.metrics["actor/skipped_steps_total"] == 0
    assert ray.metrics["actor/skipped_steps_total"] == 0
    torch.testing.assert_close(ray.batch.advantages, local.batch.advantages, rtol=RTOL, atol=ATOL)
    for key in ("old_logprobs", "old_entropy", "ref_logprobs"):
        assert (key in ray.batch.stats) == (key in local.batch.stats), key
        if key in local.batch.stats:
            torch.testing.assert_close(ray.batch.stats[key], local.batch.stats[key], rtol=RTOL, atol=ATOL)
    gap, size = _update_gap(w0, local.weights, ray.weights)
    assert size > 0 and gap <= UPDATE_RTOL, f"{recipe}: weight updates differ by {gap:.2e} (relative)"


def _report(recipe: str, keys, local: Side, ray: Side) -> dict[str, tuple[float, float]]:
    return {k: (local.metrics[k], ray.metrics[k]) for k in keys if not _close(local.metrics[k], ray.metrics[k])}


@pytest.mark.parametrize("recipe", sliced(RL_RECIPES, DEFAULT))
def test_learner_parity(recipe, one_row_group, tiny_files, sharp_model, tokenizer, fixed_batch):
    """Every metric (loss, grad norm, per-part, old-pass, advantage) within tolerance; same keys; same update."""
    w0, local, ray = _run_both(recipe, one_row_group, tiny_files, sharp_model, tokenizer, fixed_batch)
    _assert_common(recipe, w0, local, ray)
    off = _report(recipe, local.metrics, local, ray)
    assert not off, f"{recipe}: metrics differ beyond rtol={RTOL}, atol={ATOL} (local, ray): {off}"


@pytest.mark.parametrize("recipe", sliced(PARTITION_FREE, DEFAULT_MULTI_ROW))
def test_learner_parity_multi_row(recipe, multi_row_group, tiny_files, sharp_model, tokenizer, fixed_batch):
    """Several rows per micro-batch, a different split (and padding) on each rank: loss, grad norm, old-pass and
    advantage metrics, weights. Per-part metrics are partition-dependent reductions here (module docstring)."""
    w0, local, ray = _run_both(recipe, multi_row_group, tiny_files, sharp_model, tokenizer, fixed_batch)
    _assert_common(recipe, w0, local, ray)
    keys = ["actor/pg_loss", "actor/grad_norm", "actor/lr", "actor/entropy", "actor/skipped_steps_total",
            *(k for k in local.metrics if k.startswith(("mismatch/", "adv/")))]
    off = _report(recipe, keys, local, ray)
    assert not off, f"{recipe}: metrics differ beyond rtol={RTOL}, atol={ATOL} (local, ray): {off}"


def test_partition_free_recipes_are_the_expected_ones():
    """The multi-row list is derived from the parts' scopes; pin it so a scope change is noticed here."""
    assert set(RL_RECIPES) - set(PARTITION_FREE) == {"tiny_steer", "tiny_hapo", "tiny_high_entropy",
                                                      "tiny_clip_cov", "tiny_kl_cov"}


@pytest.mark.parametrize("recipe", ["tiny_steer", "tiny_minpro", "tiny_composed"])
def test_update_is_invariant_to_micro_batch_order(recipe, tiny_files, sharp_model, tokenizer, fixed_batch):
    """The noise the tolerance must absorb, measured on the local learner alone: the same plan with each
    mini-batch's micro-batches in reverse order is the same math in another fp32 summation order. It must move
    every metric by at most a third of the tolerance (the recipes with the largest local-vs-Ray gaps measured),
    so RTOL / ATOL stay meaningful on the machine the suite runs on."""
    from creditrl.learner import core
    from creditrl.learner.dp_split import MiniPlan
    from creditrl.learner.local import LocalLearner
    from creditrl.trainer.loop import _adv_inputs

    cfg = _cfg(tiny_files, sharp_model, recipe, ONE_ROW)
    out = []
    for reverse in (False, True):
        alg = Algorithm(cfg.algorithm)
        learner = LocalLearner(cfg, alg, TOTAL_STEPS, tokenizer.pad_token_id)
        b = copy.deepcopy(fixed_batch)
        m = learner.compute_old_stats(b, alg)
        b.advantages, adv = alg.advantages(_adv_inputs(b), b.stats.get("ref_logprobs"))
        plans = core.plan_batch(b, cfg)
        assert all(len(p.micro[0]) == 8 for p in plans)  # one row per micro-batch: order is all that changes
        if reverse:
            plans = [MiniPlan(p.rows, (tuple(reversed(p.micro[0])),)) for p in plans]
        part = core.update(learner, b, alg, plans, cfg)
        out.append({**m, **adv, **core.reduce_update([part], learner.scheduler.get_last_lr()[0])})
    a, b = out
    assert set(a) == set(b)
    worst = max((abs(a[k] - b[k]) / (RTOL * max(abs(a[k]), abs(b[k])) + ATOL), k) for k in a)
    assert worst[0] <= 1 / 3, f"{recipe}: order-only noise is {worst[0]:.2f} x the tolerance on {worst[1]}"


def test_clip_cov_random_stream_advances_per_rank_on_both_learners(one_row_group, tiny_files, sharp_model, tokenizer,
                                                                   fixed_batch):
    """Clip-Cov's selection stream moves on across steps on both learners, one stream per rank.

    Before: LearnerGroup pickled the driver's Algorithm to the ranks and kept only the advantage state, so on Ray
    every step restarted the stream from its seed and both ranks drew the same numbers.
    """
    from creditrl.algorithms.clip_cov import stream_seed
    from creditrl.learner.local import LocalLearner
    from creditrl.trainer.loop import learn

    g = one_row_group
    # every unclipped token a candidate, 20% detached: the generator is drawn from in every micro-batch
    cfg = _cfg(tiny_files, sharp_model, "tiny_clip_cov", g.budget, "algorithm.policy_loss.clip_cov_lb=-1e9",
               "algorithm.policy_loss.clip_cov_ub=1e9", "algorithm.policy_loss.clip_cov_ratio=0.2")
    g.group.load(g.init_dir)
    alg_local, alg_ray = Algorithm(cfg.algorithm), Algorithm(cfg.algorithm)
    seed = alg_local.policy_loss.cfg.seed
    fresh = {str(r): bytes(torch.Generator().manual_seed(stream_seed(seed, r)).get_state().tolist()).hex()
             for r in range(g.group.world)}
    local = LocalLearner(cfg, alg_local, TOTAL_STEPS, tokenizer.pad_token_id)
    m_local = learn(copy.deepcopy(fixed_batch), local, alg_local, {})
    m_ray = learn(copy.deepcopy(fixed_batch), g.group, alg_ray, {})
    assert m_local["clip_cov/selected_frac"] > 0 and m_ray["clip_cov/selected_frac"] > 0
    local_streams = alg_local.state_dict()["parts"]["policy_loss"]["streams"]
    ray_streams = alg_ray.state_dict()["parts"]["policy_loss"]["streams"]
    assert set(local_streams) == {"0"} and set(ray_streams) == set(fresh)
    assert local_streams["0"] != fresh["0"]  # local: the stream moved on
    for r in fresh:  # Ray: every rank's stream came back, moved on
        assert ray_streams[r] != fresh[r], f"rank {r}: the next step would redraw the same"
    assert ray_streams["0"] != ray_streams["1"]  # the ranks draw different numbers
    # the next step starts where this one ended (the driver's state reaches the ranks again)
    learn(copy.deepcopy(fixed_batch), g.group, alg_ray, {})
    after_two = alg_ray.state_dict()["parts"]["policy_loss"]["streams"]
    assert all(after_two[r] != ray_streams[r] for r in fresh)


# ---- non-finite values -------------------------------------------------------------------------------------------
def _rows(batch, n: int):
    """The first n rows of a RolloutBatch (no statistics yet)."""
    return replace(batch, prompt_ids=batch.prompt_ids[:n], response_ids=batch.response_ids[:n], mask=batch.mask[:n],
                   rollout_logprobs=batch.rollout_logprobs[:n], rewards=batch.rewards[:n],
                   group_ids=batch.group_ids[:n], prompt_keys=batch.prompt_keys[:n], finished=batch.finished[:n],
                   stats={}, advantages=None)


@pytest.mark.parametrize("recipe,where", [("tiny_grpo", "advantages"), ("tiny_tis", "rollout_logprobs")])
def test_non_finite_sample_skips_the_step_on_both_learners(recipe, where, one_row_group, tiny_files, sharp_model,
                                                            tokenizer, fixed_batch):
    """One NaN in one sample of a one-mini-batch batch: no weight moves on either learner and the skip is counted
    (core.py: a non-finite micro-batch loss skips its mini-batch's optimizer step on every rank); the next, clean
    update applies on both and they stay in step (no NaN left in gradients or optimizer state)."""
    from creditrl.learner.local import LocalLearner
    from creditrl.trainer.loop import _adv_inputs, learn

    g = one_row_group
    cfg = _cfg(tiny_files, sharp_model, recipe, g.budget)
    g.group.load(g.init_dir)
    half = _rows(fixed_batch, 8)  # 2 prompts x 4 samples = one mini-batch: one optimizer step
    alg_local, alg_ray = Algorithm(cfg.algorithm), Algorithm(cfg.algorithm)
    local = LocalLearner(cfg, alg_local, TOTAL_STEPS, tokenizer.pad_token_id)
    w0 = {n: t.clone() for n, t in local.named_weights()}
    out = {}
    for name, learner, alg in (("local", local, alg_local), ("ray", g.group, alg_ray)):
        b = copy.deepcopy(half)
        learner.compute_old_stats(b, alg)
        b.advantages, _ = alg.advantages(_adv_inputs(b), b.stats.get("ref_logprobs"))
        getattr(b, where)[5, 0] = float("nan")  # row 5: one sample of the second prompt
        out[name] = learner.update(b, alg)
        assert out[name]["actor/skipped_steps_total"] == 1.0, (name, out[name])
    for n, t in g.group.named_weights():
        assert torch.equal(t, w0[n]), f"ray: {n} moved in a skipped step"
    for n, t in local.named_weights():
        assert torch.equal(t, w0[n]), f"local: {n} moved in a skipped step"

    m_local = learn(copy.deepcopy(fixed_batch), local, alg_local, {})
    m_ray = learn(copy.deepcopy(fixed_batch), g.group, alg_ray, {})
    for m in (m_local, m_ray):
        assert m["actor/skipped_steps_total"] == 1.0 and m["actor/grad_norm"] > 0
        assert all(math.isfinite(v) for v in m.values())
    w_local, w_ray = dict(local.named_weights()), dict(g.group.named_weights())
    assert all(torch.isfinite(t).all() for t in w_ray.values())
    gap, size = _update_gap(w0, w_local, w_ray)
    assert size > 0 and gap <= UPDATE_RTOL, gap
    for k in ("actor/pg_loss", "actor/grad_norm"):
        assert _close(m_local[k], m_ray[k]), (k, m_local[k], m_ray[k])
