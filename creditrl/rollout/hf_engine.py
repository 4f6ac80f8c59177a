"""Rollout with Hugging Face `generate`: the CPU engine (and a GPU fallback without vLLM).

Prompts are left-padded into batches of `generation_batch_prompts`, each prompt sampled `n` times
(`num_return_sequences`). The sampler's per-token log-probs are read from the *processed* scores (after
temperature and top-p, as vLLM's `processed_logprobs`), so they are the log-probs of the distribution the token
was actually drawn from. Generation stops at EOS; tokens after it are dropped.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import Tensor

from creditrl.rollout.base import RolloutOutput, SamplingParams

log = logging.getLogger(__name__)


class HFGenerateEngine:
    """A rollout engine around a `PreTrainedModel` (or a PEFT model wrapping one).

    In the single-process trainer the engine shares the learner's module, so a weight sync only bumps the
    version; a Ray rollout actor owns its copy and receives tensors through `update_weights`.
    """

    def __init__(self, model, pad_id: int, eos_id: int, batch_prompts: int = 64, autocast_bf16: bool = False):
        self.model = model
        self.pad_id, self.eos_id = pad_id, eos_id
        self.batch_prompts = batch_prompts
        self.autocast_bf16 = autocast_bf16
        self.weight_version = 0

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutOutput:
        was_training = self.model.training
        self.model.eval()
        parts = []
        if params.seed is not None:  # once per call: chunks continue one stream (not one reseeded stream each)
            torch.manual_seed(params.seed)
        try:
            for start in range(0, len(prompt_ids), self.batch_prompts):
                chunk = prompt_ids[start : start + self.batch_prompts]
                parts.append(self._generate_chunk(chunk, params))
        finally:
            self.model.train(was_training)
        out = RolloutOutput.concat(parts)
        out.weight_version = self.weight_version
        return out

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> RolloutOutput:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [P, L] left-padded
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p) :] = 1
        greedy = params.temperature == 0
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            do_sample=not greedy,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new_tokens = out.sequences[:, width:]  # [P*n, S]
        scores = torch.stack(out.scores, dim=1).float()  # [P*n, S, V] processed logits
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # [P*n, S]
        return self._to_output(prompts, params.n, new_tokens, logprobs)

    def _to_output(self, prompts: list[list[int]], n: int, tokens: Tensor, logprobs: Tensor) -> RolloutOutput:
        out = RolloutOutput([], [], [], [], [])
        for row in range(tokens.shape[0]):
            toks = tokens[row].tolist()
            finished = self.eos_id in toks
            length = toks.index(self.eos_id) + 1 if finished else len(toks)
            out.prompt_ids.append(list(prompts[row // n]))
            out.response_ids.append(toks[:length])
            out.logprobs.append(logprobs[row, :length].tolist())
            out.finished.append(finished)
            out.prompt_index.append(row // n)
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Copy tensors into the engine's model by HF parameter name (a no-op copy when shared)."""
        state = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"weight sync: the rollout model has no parameter '{name}'")
                if state[name].data_ptr() != tensor.data_ptr():
                    state[name].copy_(tensor)
        self.weight_version = version

    def set_version(self, version: int) -> None:
        """Shared-module mode: the learner updated the weights in place; record the version."""
        self.weight_version = version

    def shutdown(self) -> None:
        """Nothing to stop: the model lives in this process (kept: a shared module belongs to the learner)."""
        return None
