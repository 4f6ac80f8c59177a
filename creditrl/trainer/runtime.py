"""Where a run executes: the one place that picks the backend (`resources.backend`).

The step loop (`creditrl/trainer/loop.py`) drives a `Runtime`, which gives it a rollout engine, a learner and
weight sync; it cannot tell the backends apart.

    backend   learner                                  rollout engine                         weight sync
    local     LocalLearner (this process)              rollout.engine in this process:        hf: shared module
                                                       hf (shares the learner's module)       vllm: update_weights
                                                       or vllm (its own engine process)       after every update
    ray       LearnerGroup: DeepSpeed ranks as         RolloutGroup: rollout actors, each     object store /
              Ray actors (creditrl/distributed)        with rollout.engine                    broadcast / CUDA IPC

Both learners run the same step code (`creditrl/learner/core.py`); both rollout sides run the same engines
(`creditrl/rollout/`).
"""

from __future__ import annotations

import logging
from typing import Protocol

from creditrl.algorithms import Algorithm
from creditrl.config import RecipeConfig
from creditrl.learner.critic_local import LocalCritic
from creditrl.learner.local import Learner, LocalLearner
from creditrl.rollout.base import RolloutEngine
from creditrl.rollout.factory import make_rollout_engine
from creditrl.weights.buckets import is_adapter_tensor

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What the step loop needs from a backend."""

    learner: Learner
    engine: RolloutEngine  # generate(prompt_ids, SamplingParams) -> RolloutOutput
    critic: object | None  # PPO with GAE: LocalCritic / RayCritic (creditrl/learner/critic.py); None otherwise

    def sync(self, version: int) -> dict[str, float]:
        """Make the rollout engine(s) generate with the learner's current weights, tagged `version`; metrics."""
        ...

    def before_learn(self) -> None:
        """Between generation and the learner stages (colocated GPU: the rollout engines release memory)."""
        ...

    def step_metrics(self) -> dict[str, float]:
        """Backend health of the last step (same keys on every backend)."""
        ...

    def shutdown(self) -> None: ...


def make_runtime(cfg: RecipeConfig, algorithm: Algorithm, total_optimizer_steps: int, pad_id: int,
                 eos_id: int) -> Runtime:
    """The runtime of `resources.backend` (Ray is imported only for `ray`)."""
    if cfg.resources.backend == "ray":
        from creditrl.distributed.runtime import RayRuntime

        return RayRuntime(cfg, total_optimizer_steps, pad_id, eos_id)
    return LocalRuntime(cfg, algorithm, total_optimizer_steps, pad_id, eos_id)


class LocalRuntime:
    """Everything in this process: `LocalLearner` + the rollout engine of `rollout.engine`.

    hf: the engine wraps the learner's own module, so an update is visible to it at once (sync only records the
    version). vllm: the engine holds its own copy of the weights; every sync sends the policy's weights (the
    LoRA adapter alone with `model.lora.enabled`) through `update_weights`.
    """

    def __init__(self, cfg: RecipeConfig, algorithm: Algorithm, total_optimizer_steps: int, pad_id: int,
                 eos_id: int):
        self.cfg = cfg
        self.learner = LocalLearner(cfg, algorithm, total_optimizer_steps, pad_id)
        # PPO with GAE: the value model (creditrl/learner/critic_local.py); None without a `critic:` section
        self.critic = LocalCritic(cfg, pad_id) if cfg.critic is not None else None
        self.shared = cfg.rollout.engine == "hf"
        self.engine = make_rollout_engine(cfg, pad_id, eos_id, seed=cfg.seed,
                                          shared_model=self.learner.policy if self.shared else None)

    def sync(self, version: int) -> dict[str, float]:
        if self.shared:
            self.engine.set_version(version)  # the update already changed the rollout weights in place
            return {"weight_sync/buckets": 0.0}
        named = self.learner.named_weights()
        if self.cfg.model.lora.enabled:
            named = ((n, t) for n, t in named if is_adapter_tensor(n))
        self.engine.update_weights(named, version)
        return {"weight_sync/buckets": 1.0}

    def before_learn(self) -> None:
        return None

    def step_metrics(self) -> dict[str, float]:
        return {"rollout/actor_restarts": 0.0}

    def shutdown(self) -> None:
        self.engine.shutdown()  # vLLM: stop its engine process
