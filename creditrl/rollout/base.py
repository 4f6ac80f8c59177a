"""The rollout-engine interface. The Hugging Face `generate` engine implements it on CPU; the vLLM engine
implements it on GPU (issue on distributed rollout). Everything crosses this boundary as plain lists, so the
same types travel through Ray's object store.

Sample order: for prompts p_0..p_{P-1} and n samples each, output row `k` is sample `k % n` of prompt `k // n`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int | None = None  # per-call seed; None = the engine's RNG stream
    top_k: int = 0  # keep the k most likely tokens; 0 or -1 = off
    min_p: float = 0.0  # keep tokens with p >= min_p * p_max; 0 = off
    stop_token_ids: tuple[int, ...] = ()  # end tokens besides the engine's EOS (creditrl/rollout/stopping.py)
    stop: tuple[str, ...] = ()  # stop strings: the response ends at the token that completes one (kept)

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be >= 1, or 0 / -1 for off, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if any(not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty, got {list(self.stop)}")

    @property
    def top_k_or_off(self) -> int:
        """top_k, 0 meaning off (-1 is accepted as off, as in vLLM)."""
        return max(self.top_k, 0)


@dataclass
class RolloutOutput:
    """Generated samples, one row per (prompt, sample). Response token lists include the end token (or
    the token completing a stop string) that ended them."""

    prompt_ids: list[list[int]]  # [B] prompt token ids (no padding)
    response_ids: list[list[int]]  # [B] response token ids (no padding)
    logprobs: list[list[float]]  # [B] sampler log-prob of each response token (after temperature / min-p /
    #                              top-k / top-p: the truncated, renormalised distribution it was drawn from)
    finished: list[bool]  # [B] True if the response ended at an end token or stop string, False if cut at
    #                       max_new_tokens
    prompt_index: list[int]  # [B] index of the prompt in the request
    weight_version: int = 0  # version of the weights that generated these samples
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.response_ids)

    def padded(self, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """(response_ids [B, T] long, response_mask [B, T] float, logprobs [B, T] float32), right-padded."""
        t = max(max((len(r) for r in self.response_ids), default=0), 1)
        ids = torch.tensor([list(r) + [pad_id] * (t - len(r)) for r in self.response_ids], dtype=torch.long)
        lps = torch.tensor([list(lp) + [0.0] * (t - len(lp)) for lp in self.logprobs], dtype=torch.float32)
        lengths = torch.tensor([len(r) for r in self.response_ids], dtype=torch.long)
        mask = (torch.arange(t) < lengths.unsqueeze(1)).float()
        return ids.view(len(self), t), mask.view(len(self), t), lps.view(len(self), t)

    @staticmethod
    def concat(parts: list["RolloutOutput"]) -> "RolloutOutput":
        """Concatenate outputs of consecutive prompt chunks (prompt_index is offset accordingly)."""
        out = RolloutOutput([], [], [], [], [], weight_version=parts[0].weight_version if parts else 0)
        offset = 0
        for p in parts:
            out.prompt_ids += p.prompt_ids
            out.response_ids += p.response_ids
            out.logprobs += p.logprobs
            out.finished += p.finished
            out.prompt_index += [i + offset for i in p.prompt_index]
            offset += (max(p.prompt_index) + 1) if p.prompt_index else 0
            out.weight_version = min(out.weight_version, p.weight_version)
        return out


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates samples for token-id prompts and receives new weights from the learner."""

    weight_version: int

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutOutput: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Load new policy weights (HF parameter names) and set the weight version."""
        ...

    def shutdown(self) -> None:
        """Release the engine (vLLM: stop its engine process); a no-op for in-process engines."""
        ...
