"""Reward model: a Hugging Face sequence-classification model from a local directory scores each response.

    text  = template.format(prompt=..., response=..., answer=...)
          = the reward model's chat template over the prompt conversation + the response (use_chat_template)
    score = logits[label]            transform: none
          = sigmoid(logits[label])   transform: sigmoid

Batched: the manager calls `score_batch` once per step in the driver process, which tokenizes `batch_size`
texts at a time (right padding; the model pools the last non-pad token) on CPU or GPU. Texts longer than
`max_length` tokens are truncated from the left, so the end of the response, where the answer is, is kept.
Nothing is downloaded: `path` must be a directory with config.json, weights and a tokenizer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

from creditrl.rewards.base import REWARDS, RewardConfigError, RewardSample

log = logging.getLogger(__name__)


@dataclass
class RewardModelConfig:
    path: str = ""  # local model directory (required)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # torch dtype the model is loaded in
    batch_size: int = 16  # texts tokenized and scored per forward pass, >= 1
    max_length: int = 1024  # tokens; longer texts lose their beginning
    template: str = "{prompt}{response}"  # Python format string over prompt, response, answer
    use_chat_template: bool = False  # prompt messages (chat data) or [user: prompt], then the response, templated once
    label: int = 0  # which logit is the reward (0 for a num_labels=1 reward model)
    transform: Literal["none", "sigmoid"] = "none"  # score = the logit, or sigmoid(logit) in (0, 1)

    def __post_init__(self):
        if self.batch_size < 1 or self.max_length < 1:
            raise ValueError("reward_model batch_size and max_length must be >= 1")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class RewardModel:
    """A loaded sequence-classification reward model (see module docstring)."""

    def __init__(self, cfg: RewardModelConfig):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not cfg.path or not os.path.isdir(cfg.path):
            raise RewardConfigError(f"reward_model: path {cfg.path!r} is not a local model directory "
                                    "(config.json + weights + tokenizer); nothing is downloaded")
        self.cfg = cfg
        self.device = _device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.path)
        self.tokenizer.truncation_side = "left"
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise RewardConfigError(f"reward_model: the tokenizer in {cfg.path} has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(cfg.path, dtype=getattr(torch, cfg.dtype))
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        if not 0 <= cfg.label < self.model.config.num_labels:
            raise RewardConfigError(f"reward_model: label {cfg.label} is out of range for a model with "
                                    f"{self.model.config.num_labels} labels")
        log.info("reward model %s on %s (%s)", cfg.path, self.device, cfg.dtype)

    def text(self, sample: RewardSample) -> str:
        """The text scored. With `use_chat_template` the conversation is templated once, by the reward model's
        tokenizer: the prompt's messages (chat data: system turn included, before the policy's template was
        applied) or one user turn of the prompt text, then the response as the assistant turn."""
        if self.cfg.use_chat_template:
            prompt = sample.messages if sample.messages is not None else [{"role": "user", "content": sample.prompt}]
            messages = [*prompt, {"role": "assistant", "content": sample.response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return self.cfg.template.format(prompt=sample.prompt, response=sample.response, answer=sample.answer)

    def score_batch(self, samples: list[RewardSample]) -> list[float]:
        import torch

        out: list[float] = []
        for start in range(0, len(samples), self.cfg.batch_size):
            chunk = [self.text(s) for s in samples[start : start + self.cfg.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.cfg.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()  # [b, num_labels]
            values = logits[:, self.cfg.label]  # [b]
            if self.cfg.transform == "sigmoid":
                values = torch.sigmoid(values)
            out += values.cpu().tolist()
        return out

    def __call__(self, sample: RewardSample) -> float:
        return self.score_batch([sample])[0]


@REWARDS.register("reward_model", RewardModelConfig)
def reward_model(cfg: RewardModelConfig) -> RewardModel:
    """Score of a local Hugging Face sequence-classification model, batched, on CPU or GPU."""
    return RewardModel(cfg)
