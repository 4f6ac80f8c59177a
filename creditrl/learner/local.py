"""The single-process learner shell: one policy (and reference) model, torch AdamW, in this process.

The step itself (planning, old/ref pass, loss inputs, token-scope statistics, composed loss, non-finite
handling, metrics) is `creditrl/learner/core.py`, shared with the DeepSpeed ranks; the preference step
(DPO / TDPO / cDPO) is `creditrl/learner/preference.py`, shared the same way. This shell supplies the forward,
backward and optimizer step, and the checkpoint layout. `Learner` is the protocol the step loop drives;
`LocalLearner` and the Ray `LearnerGroup` implement it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor

from creditrl.algorithms import Algorithm
from creditrl.config import RecipeConfig
from creditrl.learner import core, health
from creditrl.learner import preference as pref
from creditrl.learner.batch import MicroBatch, RolloutBatch, packing_width
from creditrl.learner.pair_stats import ReferenceStats, pair_token_stats
from creditrl.learner.pairs import Pair, plan_pairs
from creditrl.learner.token_stats import compiled_decoder, decoder_and_head, micro_batch_token_stats
from creditrl.models.build import build_optimizer, build_policy, build_reference
from creditrl.models.precision import use_bf16_autocast

log = logging.getLogger(__name__)


class Learner(Protocol):
    def compute_old_stats(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]: ...

    def update(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]: ...

    def preference_update(self, pairs: Sequence[Pair]) -> dict[str, float]: ...

    def evaluate_pairs(self, pairs: Sequence[Pair]) -> dict[str, float]: ...

    def named_weights(self) -> Iterator[tuple[str, Tensor]]: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


def optimizer_step(params, optimizer, scheduler, max_grad_norm: float, finite: bool) -> float | None:
    """Clip by global norm and apply one step (single process); the pre-clip norm, or None when skipped (`finite`
    False, or a non-finite norm: the gradients are dropped and neither the optimizer nor the schedule moves)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if finite else None
    if grad_norm is None or not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


class LocalLearner:
    """Single-process learner (CPU or one GPU): AdamW, warm-up schedule, clipping, micro-batching, LoRA."""

    def __init__(self, cfg: RecipeConfig, algorithm: Algorithm, total_optimizer_steps: int, pad_id: int):
        self.cfg, self.pad_id = cfg, pad_id
        self.policy = build_policy(cfg.model)
        rl_ref = cfg.preference is None and algorithm.stats.ref_logprobs
        self.ref = build_reference(cfg.model) if rl_ref else None
        self.pref = pref.build_preference_models(cfg, self.policy) if cfg.preference is not None else None
        self.pack_width = packing_width(cfg.train.pack_groups, self.policy, self.ref)
        self.decoder = compiled_decoder(self.policy) if cfg.model.compile else None  # None: the eager body
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.total_optimizer_steps = total_optimizer_steps
        self.optimizer, self.scheduler = build_optimizer(self.params, cfg.train, total_optimizer_steps)
        self.skipped_steps = 0
        self.consecutive_skipped = 0  # the skip budget's counter (creditrl/learner/health.py)
        self.param_limit = health.param_limit(health.max_abs(self.params), cfg.train.max_param_abs)

    # ---- the Shell of creditrl/learner/core.py -----------------------------------------------------------
    def forward(self, mb: MicroBatch, want: tuple[str, ...], keep_hidden: bool = False,
                kernel_options: dict | None = None) -> dict[str, Tensor]:
        return micro_batch_token_stats(self.policy, mb, self.cfg.rollout.temperature, want,
                                       use_bf16_autocast(self.cfg.model), kernel_options, keep_hidden=keep_hidden,
                                       decoder=self.decoder)

    def ref_logprobs(self, mb: MicroBatch) -> Tensor:
        if self.ref is not None:
            return micro_batch_token_stats(self.ref, mb, self.cfg.rollout.temperature, ("logp",),
                                           use_bf16_autocast(self.cfg.model))["logp"]
        with self._ref_context():
            return self.forward(mb, ("logp",))["logp"]

    def _ref_context(self):
        if self.cfg.model.lora.enabled:
            return self.policy.disable_adapter()  # the reference is the base model without the adapter
        raise RuntimeError("reference log-probs were requested but this learner built no reference model: it "
                           "builds one only when its recipe's algorithm needs one (KL to the reference) or with LoRA")

    def head_weight(self) -> Tensor:
        # a copy: a detached view would follow the in-place optimizer steps of the update, so later mini-batches
        # would pair pi_old's hidden states with an updated lm_head (the DeepSpeed shell gathers a copy too)
        return decoder_and_head(self.policy)[1].weight.detach().clone()

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self, finite: bool) -> float | None:
        return optimizer_step(self.params, self.optimizer, self.scheduler, self.cfg.train.max_grad_norm, finite)

    def set_train(self, mode: bool) -> None:
        self.policy.train(mode)

    def param_max_abs(self) -> float:
        return health.max_abs(self.params)

    def pair_stats(self, mb: MicroBatch, keys: list[str], refs: ReferenceStats, want_kl: bool) -> dict[str, Tensor]:
        """The `PairShell` forward of creditrl/learner/preference.py."""
        return pair_token_stats(self.policy, mb, keys, refs, want_kl, use_bf16_autocast(self.cfg.model))

    # ---- the Learner protocol ----------------------------------------------------------------------------
    def compute_old_stats(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]:
        """Fill batch.stats with pi_old / pi_ref statistics (`core.store_old_stats`); returns metrics."""
        plans = core.plan_batch(batch, self.cfg)
        part = core.old_pass(self, batch, algorithm.stats, plans,
                             policy=not core.skips_old_pass(self.cfg, algorithm, plans))
        return core.store_old_stats(batch, [part], algorithm.stats)

    def update(self, batch: RolloutBatch, algorithm: Algorithm) -> dict[str, float]:
        """ppo_epochs x mini-batches of optimizer steps (`core.update`); returns the step's metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        part = core.update(self, batch, algorithm, core.plan_batch(batch, self.cfg), self.cfg,
                           skipped_before=self.skipped_steps, consecutive_before=self.consecutive_skipped)
        self.skipped_steps, self.consecutive_skipped = part.skipped_steps, part.consecutive_skipped
        return core.finish_update(batch, [part], self.scheduler.get_last_lr()[0], algorithm.stats)

    def preference_update(self, pairs: Sequence[Pair]) -> dict[str, float]:
        """One optimizer step on a batch of preference pairs (`preference.update`); returns its metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        plan = plan_pairs(pairs, self.cfg.train.micro_batch_tokens_per_worker)
        part = pref.update(self, pairs, plan, self.cfg, self._preference_models(), skipped_before=self.skipped_steps,
                           consecutive_before=self.consecutive_skipped)
        self.skipped_steps, self.consecutive_skipped = part.skipped_steps, part.consecutive_skipped
        return pref.reduce_update([part], self.scheduler.get_last_lr()[0])

    def evaluate_pairs(self, pairs: Sequence[Pair]) -> dict[str, float]:
        """Held-out pair metrics `eval/pref_acc`, ... (`preference.reduce_evaluation`)."""
        plan = plan_pairs(pairs, self.cfg.train.micro_batch_tokens_per_worker)
        return pref.reduce_evaluation([pref.evaluate_share(self, pairs, plan, self._preference_models())])

    def _preference_models(self) -> pref.PreferenceModels:
        if self.pref is None:
            raise ValueError("preference_update / evaluate_pairs need a recipe with a `preference:` section")
        return self.pref

    # ---- weights, checkpoints ----------------------------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        return ((n, p.detach()) for n, p in self.policy.named_parameters())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory / "model")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "skipped_steps": self.skipped_steps, "consecutive_skipped": self.consecutive_skipped},
                   directory / "learner_state.pt")

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        model_dir = directory / "model"
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"checkpoint {directory} has no model weights in {model_dir}")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        if self.cfg.model.lora.enabled:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.policy, state)
        else:
            missing, unexpected = self.policy.load_state_dict(state, strict=False)
            real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embedding
            if real_missing or unexpected:
                raise ValueError(f"checkpoint {directory} does not match the model: missing {real_missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
        st = torch.load(directory / "learner_state.pt", weights_only=False)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.skipped_steps = st["skipped_steps"]
        self.consecutive_skipped = st.get("consecutive_skipped", 0)


def count_optimizer_steps(cfg: RecipeConfig) -> int:
    """Optimizer steps of the whole run (the learning-rate schedule's length): one per step for preference
    training, ppo_epochs x mini-batches per step for RL (not counting the critic's warm-up steps, which skip the
    policy update)."""
    if cfg.preference is not None:
        return cfg.train.steps
    per_step = cfg.train.global_batch_prompts // cfg.mini_batch_prompts_resolved
    critic_warmup = cfg.critic.warmup_steps if getattr(cfg, "critic", None) is not None else 0
    return max(cfg.train.steps - critic_warmup, 1) * cfg.train.ppo_epochs * per_step

