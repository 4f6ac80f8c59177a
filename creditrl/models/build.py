"""Building the models, tokenizer and optimizer of a run: the one place that does it.

Every process that holds a model (the single-process learner, each DeepSpeed rank, each rollout actor, the
preference and SFT trainers, `creditrl eval`) builds it here, so the architecture, parameter names and LoRA
structure are the same everywhere and a weight sync can match tensors by name.

    load_tokenizer(path)          AutoTokenizer of a local directory (pad = eos when the tokenizer has none)
    load_causal_lm(path, dtype)   AutoModelForCausalLM.from_pretrained of a local directory, clear errors
    build_policy(model_cfg)       policy (+ LoRA adapter, gradient checkpointing), ready to train
    build_reference(model_cfg)    a frozen copy of the starting model (None when LoRA: adapter disabled instead)
    build_optimizer(params, train_cfg, total_steps)   AdamW + warm-up/decay schedule (LambdaLR)
"""

from __future__ import annotations

from pathlib import Path

import torch

from creditrl.config.schema import ModelConfig, TrainConfig
from creditrl.models.schedule import lr_factor


class ModelLoadError(ValueError):
    """The model directory cannot be loaded; the message says why and what to do."""


def _missing_dir(p: Path) -> ModelLoadError:
    return ModelLoadError(f"model directory not found: {p}. Set model.path to a local Hugging Face model "
                          f"directory (for the demo, run `creditrl tiny init` and `creditrl sft` first).")


def check_model_dir(path: str) -> Path:
    """A local Hugging Face model directory with config and weights, or a `ModelLoadError` saying what is wrong."""
    p = Path(path)
    if not p.is_dir():
        raise _missing_dir(p)
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{p} has no config.json: it is not a Hugging Face model directory.")
    weights = list(p.glob("*.safetensors")) + list(p.glob("*.bin")) + list(p.glob("*.safetensors.index.json"))
    if not weights:
        raise ModelLoadError(f"{p} has a config.json but no weights (*.safetensors or *.bin). Save the model "
                             f"with save_pretrained, or point model.path at the directory that has them.")
    return p


def load_tokenizer(path: str):
    """The tokenizer saved in a local model (or adapter) directory, with clear errors."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise _missing_dir(p)
    if not (p / "tokenizer_config.json").is_file() and not (p / "tokenizer.json").is_file():
        raise ModelLoadError(f"{p} has no tokenizer (tokenizer.json / tokenizer_config.json): save the tokenizer "
                             f"next to the model with tokenizer.save_pretrained.")
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - a user-supplied directory: corrupt tokenizer.json, bad config, ...
        raise ModelLoadError(f"the tokenizer in {p} can not be loaded: {type(e).__name__}: {_short(e)}. Fix: "
                             f"re-save it with tokenizer.save_pretrained, or copy the tokenizer files again.") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32"):
    """`AutoModelForCausalLM.from_pretrained` on a local directory, with clear errors."""
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        # the resolved path: LoRA checkpoints record it as their base (adapter_config.json), usable from anywhere
        return AutoModelForCausalLM.from_pretrained(str(p.resolve()), dtype=torch_dtype)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EnvironmentError) as e:
        # a user-supplied directory: invalid config.json, unknown model_type, truncated or mismatched weights
        raise ModelLoadError(f"the model in {p} can not be loaded: {type(e).__name__}: {_short(e)}. Fix: check "
                             f"config.json and the weight files (re-save with save_pretrained).") from None


def _short(e: Exception, n: int = 400) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def add_lora(model, mc: ModelConfig):
    """Wrap `model` in a PEFT LoRA adapter as `model.lora` configures it (same names in every process)."""
    from peft import LoraConfig, get_peft_model

    lc = mc.lora
    return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                            target_modules=lc.target_modules, task_type="CAUSAL_LM"))


def build_policy(mc: ModelConfig, path: str | None = None, trainable: bool = True):
    """The policy of `model.path` (or `path`): LoRA-wrapped when enabled; for training, use_cache off and
    gradient checkpointing as configured; otherwise (a rollout copy) frozen and in eval mode."""
    model = load_causal_lm(path or mc.path, mc.dtype)
    if trainable:
        model.config.use_cache = False
        if mc.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mc.lora.enabled:
        model = add_lora(model, mc)
    if trainable:
        return model.train()
    model.requires_grad_(False)
    return model.eval()


def build_reference(mc: ModelConfig, path: str | None = None):
    """A frozen copy of the starting model; None with LoRA (the reference is the base with the adapter off)."""
    if mc.lora.enabled and path is None:
        return None
    ref = load_causal_lm(path or mc.path, mc.dtype).eval()
    ref.requires_grad_(False)
    return ref


def build_optimizer(params: list[torch.nn.Parameter], tc: TrainConfig, total_optimizer_steps: int,
                    cpu_offload: bool = False):
    """(AdamW, LambdaLR) with the recipe's betas, eps, weight decay and warm-up/decay schedule.

    cpu_offload: DeepSpeed's CPU Adam (AdamW mode) for `resources.offload_optimizer`; same update rule.
    """
    kwargs = dict(lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps, weight_decay=tc.weight_decay)
    if cpu_offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    else:
        optimizer = torch.optim.AdamW(params, **kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_optimizer_steps, tc.warmup_steps, tc.lr_schedule, tc.min_lr_ratio))
    return optimizer, scheduler


def build_value_model(path: str, dtype: str = "float32", gradient_checkpointing: bool = False, seed: int = 0):
    """The critic of PPO with GAE: the transformer trunk of `path` + a scalar linear head per token.

    `AutoModelForTokenClassification` with num_labels 1: from a causal-LM directory (Llama, Qwen2, ... all have a
    `*ForTokenClassification`) it loads the trunk and initialises a fresh `score` head (N(0, initializer_range),
    bias 0); from a saved critic it loads the head too. The same class is what verl's critic loads, and its
    `save_pretrained` directory is a loadable `critic.path`. Classifier dropout is set to 0 (the default would be
    0.1 for Llama), so the value forward is deterministic like the policy's. The fresh head is drawn from its own
    RNG stream seeded with `seed`, so every backend (the local critic, each DeepSpeed rank) starts from the same
    critic whatever the process drew before.
    """
    from transformers import AutoConfig, AutoModelForTokenClassification

    p = check_model_dir(path)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        config = AutoConfig.from_pretrained(str(p.resolve()), num_labels=1)
        config.classifier_dropout = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForTokenClassification.from_pretrained(str(p.resolve()), config=config,
                                                                    dtype=torch_dtype)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EnvironmentError) as e:
        raise ModelLoadError(f"the critic can not be built from {p}: {type(e).__name__}: {_short(e)}. Fix: "
                             f"critic.path (or model.path) must be a causal-LM or token-classification model "
                             f"directory of an architecture with a *ForTokenClassification class.") from None
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()
