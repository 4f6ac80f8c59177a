"""The preference kind of run for the step loop (`creditrl/trainer/loop.py`): DPO, TDPO1/TDPO2, cDPO.

`creditrl train` takes this path for a recipe with a `preference:` section, on `resources.backend: local`
(`LocalLearner`) and `ray` (the DeepSpeed `LearnerGroup`); the learner step is `creditrl/learner/preference.py`.

    step   the next `preference.batch_pairs` pairs from the pair sampler -> `learner.preference_update(pairs)`:
           one optimizer step (micro-batched, chosen + rejected in one forward, loss = batch mean)
    eval   held-out pair metrics from the learner (`learner.evaluate_pairs`: eval/pref_acc, pref_reward_acc,
           pref_margin, kl_per_token_{chosen,rejected}) + greedy task accuracy of the rollout engine (synced to
           the learner after every update) on the task's eval prompts (`data.eval_files`)
    state  the pair sampler's position (the learner checkpoints itself)
"""

from __future__ import annotations

import time

from creditrl.config import RecipeConfig
from creditrl.data import DataError, PromptDataset, PromptSampler, load_prompt_datasets
from creditrl.data.dataset import load_rows
from creditrl.preference.data import PreferencePair, load_pairs
from creditrl.rewards import RewardManager
from creditrl.trainer.evaluate import evaluate_task


def load_pair_files(cfg: RecipeConfig, files: list[str], tokenizer) -> list[PreferencePair]:
    """The pairs of `files` with the recipe's field names, template and limits."""
    pc = cfg.preference
    return load_pairs(files, tokenizer, prompt_field=pc.prompt_field, chosen_field=pc.chosen_field,
                      rejected_field=pc.rejected_field, template=cfg.data.template,
                      max_prompt_tokens=cfg.data.max_prompt_tokens, response_suffix=pc.response_suffix,
                      system_prompt=cfg.data.system_prompt)


def task_eval_prompts(cfg: RecipeConfig, tokenizer) -> PromptDataset:
    """The task prompts of the greedy-accuracy evaluation: data.eval_files (else the held-out split of the
    training prompts), capped at eval.max_prompts."""
    d = cfg.data
    if d.eval_files:
        data = PromptDataset(load_rows(d.eval_files, d.prompt_field, d.answer_field, d.template, tokenizer,
                                       d.max_prompt_tokens, system_prompt=d.system_prompt,
                                       answer_format=d.answer_format, role="eval"))
    else:
        data = load_prompt_datasets(d, tokenizer, cfg.seed)[1]
    if cfg.eval.max_prompts:
        data.rows = data.rows[: cfg.eval.max_prompts]
    return data


class PreferenceSteps:
    """The `StepKind` of offline preference training (see the module docstring)."""

    def __init__(self, cfg: RecipeConfig, tokenizer, rewards: RewardManager):
        if cfg.preference is None:
            raise ValueError("PreferenceSteps needs a recipe with a `preference:` section")
        pc = cfg.preference
        self.cfg, self.tokenizer, self.rewards = cfg, tokenizer, rewards
        self.train_pairs = load_pair_files(cfg, pc.train_files, tokenizer)
        self.eval_pairs = load_pair_files(cfg, pc.eval_files, tokenizer)[: pc.eval_max_pairs]
        if not self.eval_pairs:
            raise DataError(f"preference.eval_files {pc.eval_files} hold no pairs (or preference.eval_max_pairs "
                            f"is 0): the held-out pair metrics need at least one")
        self.task_eval = task_eval_prompts(cfg, tokenizer)
        self.sampler = PromptSampler(len(self.train_pairs), cfg.seed, cfg.data.shuffle)
        self.label = pc.loss

    def describe(self) -> str:
        return (f"{self.cfg.preference.loss}: {len(self.train_pairs)} train / {len(self.eval_pairs)} held-out pairs, "
                f"{len(self.task_eval)} task eval prompts")

    def run_step(self, step: int, runtime, timing: dict[str, float]) -> dict[str, float]:
        pairs = [self.train_pairs[i] for i in self.sampler.next_indices(self.cfg.preference.batch_pairs)]
        runtime.before_learn()
        t0 = time.perf_counter()
        metrics = runtime.learner.preference_update(pairs)
        timing["update_actor"] = time.perf_counter() - t0
        return metrics

    def evaluate(self, runtime, tag: str) -> dict[str, float]:
        t0 = time.perf_counter()
        m = runtime.learner.evaluate_pairs(self.eval_pairs)
        m.update(evaluate_task(self.cfg, runtime.engine, self.task_eval, self.rewards, self.tokenizer, tag))
        m["timing_s/testing"] = time.perf_counter() - t0
        return m

    def step_metrics(self, timing: dict[str, float], step_time: float) -> dict[str, float]:
        out = {f"timing_s/{k}": v for k, v in timing.items()}
        out["timing_s/step"] = step_time
        out["train/pairs"] = float(self.cfg.preference.batch_pairs)
        return out

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def summary_line(self, step: int, total: int, m: dict[str, float]) -> str:
        nan = float("nan")
        kl = m.get("train/kl_per_token/chosen")
        return (f"step {step}/{total} | loss {m['train/loss']:.4f} | reward acc "
                f"{m.get('train/rewards/accuracies', nan):.3f} | margin {m.get('train/rewards/margins', nan):.3f}"
                + (f" | KL/token {kl:.4f}" if kl is not None else "") + f" | {m['timing_s/step']:.2f}s")

    def eval_line(self, after: bool, m: dict[str, float]) -> str:
        label = "trained  " if after else "reference"
        return (f"{label}: held-out pref acc {100 * m.get('eval/pref_acc', float('nan')):.1f}% | greedy acc "
                f"{100 * m.get('eval/greedy_acc', float('nan')):.1f}% | KL/token chosen "
                f"{m.get('eval/kl_per_token_chosen', float('nan')):.4f} rejected "
                f"{m.get('eval/kl_per_token_rejected', float('nan')):.4f}")
