"""The typed schema of a recipe. Defaults live here, in code; a recipe YAML only states what differs.

Batch-size names say what they count and whether they are global (whole run, all workers) or per worker:
`train.global_batch_prompts` prompts are sampled per step, each gets `rollout.n_samples` responses;
`train.mini_batch_prompts` prompts (global) make one optimizer step; `train.micro_batch_tokens_per_worker` is
the padded-token budget of one forward/backward on one worker (a performance knob, not an algorithmic one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from creditrl.algorithms import AlgorithmConfig
from creditrl.rewards.config import RewardConfig


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    path: str = "tiny/sft"  # a local Hugging Face model directory (config.json + weights + tokenizer)
    dtype: Literal["float32", "bfloat16"] = "float32"  # parameter dtype
    autocast_bf16: bool = False  # bf16 autocast for forward passes (fast on CPUs with AMX)
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=lambda: ["tiny/data/train.jsonl"])
    eval_files: list[str] = field(default_factory=lambda: ["tiny/data/eval.jsonl"])  # [] = split train
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    template: str = "{prompt}"  # Python format string over the row's fields; "chat" = tokenizer chat template
    eval_fraction: float = 0.1  # held-out fraction of train_files when eval_files is empty
    max_prompt_tokens: int = 128  # longer prompts are dropped (counted in the log)
    shuffle: bool = True

    def __post_init__(self):
        if not self.train_files:
            raise ValueError("data.train_files is empty: give at least one .jsonl or .parquet file")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")


@dataclass
class RolloutConfig:
    engine: Literal["hf"] = "hf"
    n_samples: int = 8  # responses per prompt (the GRPO group size)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    generation_batch_prompts: int = 64  # prompts per generate() call on one worker (memory knob)

    def __post_init__(self):
        if self.n_samples < 1:
            raise ValueError(f"rollout.n_samples must be >= 1, got {self.n_samples}")
        if self.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 for RL sampling (greedy decoding is for eval)")


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch_prompts: int = 16  # prompts per step, all workers together
    mini_batch_prompts: int | None = None  # prompts per optimizer step (global); null = global_batch_prompts
    ppo_epochs: int = 1
    micro_batch_tokens_per_worker: int = 4096  # padded tokens per forward/backward on one worker
    lr: float = 1e-4
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    min_lr_ratio: float = 0.0  # final lr / lr for linear and cosine decay
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal and sample more prompts
    dynamic_sampling_max_rounds: int = 3

    def __post_init__(self):
        for name in ("steps", "global_batch_prompts", "ppo_epochs", "micro_batch_tokens_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.mini_batch_prompts is not None and self.global_batch_prompts % self.mini_batch_prompts:
            raise ValueError(
                f"train.global_batch_prompts ({self.global_batch_prompts}) is not divisible by "
                f"train.mini_batch_prompts ({self.mini_batch_prompts}). Fix: make mini_batch_prompts a divisor "
                f"of global_batch_prompts, e.g. {_divisor_hint(self.global_batch_prompts, self.mini_batch_prompts)}"
            )
        if len(self.adam_betas) != 2:
            raise ValueError(f"train.adam_betas needs two numbers, got {self.adam_betas}")


@dataclass
class SFTConfig:
    """Supervised warm start (`creditrl sft RECIPE`): teacher forcing on template(prompt) + answer."""

    init_path: str = "tiny/base"  # model directory to start from
    output_path: str = "tiny/sft"  # where the fine-tuned model is saved (save_pretrained)
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 20
    answer_suffix: str = ""  # appended after the answer before EOS
    answer_field: str | None = None  # the field imitated by SFT; null = data.answer_field


@dataclass
class EvalConfig:
    every_steps: int = 0  # 0 = only before and after training
    max_prompts: int = 200
    pass_k: int = 4  # samples per prompt for pass@k (at `temperature`); 0 disables
    temperature: float = 1.0
    batch_prompts: int = 100


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end
    keep: int = 2  # newest checkpoints kept
    resume: str = "never"  # never | auto (latest in output_dir) | path to a checkpoint directory

    def __post_init__(self):
        if self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {self.keep}")


@dataclass
class LoggingConfig:
    tensorboard: bool = False
    progress: bool = True  # rich progress bar and one line per step
    level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"


@dataclass
class RecipeConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs/{name}"  # {name} and {seed} are filled in
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        if self.algorithm.loss_agg == "seq-mean-token-sum-norm" and self.algorithm.loss_agg_norm_len is None:
            self.algorithm.loss_agg_norm_len = self.rollout.max_new_tokens

    @property
    def run_dir(self) -> str:
        return self.output_dir.format(name=self.name, seed=self.seed)

    @property
    def mini_batch_prompts_resolved(self) -> int:
        return self.train.mini_batch_prompts or self.train.global_batch_prompts


def _divisor_hint(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - near))
