"""Rollout with Hugging Face `generate`: the CPU engine (and a GPU fallback without vLLM).

Prompts are left-padded into batches of `generation_batch_prompts`, each prompt sampled `n` times
(`num_return_sequences`). Sampling applies temperature, min-p, top-k, top-p in that order (vLLM's order; built
here as one `LogitsProcessorList`, so transformers' own order does not apply). The sampler's per-token
log-probs are read from the *processed* scores (after all four, as vLLM's `processed_logprobs`), so they are
the log-probs of the distribution the token was actually drawn from. Generation stops at any end token (the
engine's EOS + `SamplingParams.stop_token_ids`) or stop string (creditrl/rollout/stopping.py); the token that
ended a response is kept, tokens after it are dropped.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import Tensor

from creditrl.rollout.base import RolloutOutput, SamplingParams
from creditrl.rollout.stopping import StopStringCriteria, first_stop

log = logging.getLogger(__name__)


def generation_positions(attention: Tensor) -> Tensor:
    """Position ids of left-padded rows, as `generate` derives them: real tokens count from 0, padding is 0."""
    return (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)  # [P, L]


@torch.no_grad()
def shared_prompt_cache(model, input_ids: Tensor, attention: Tensor, n: int):
    """The KV cache of every prompt but its last token, computed once per prompt and repeated for its n samples.

    `generate` expands each prompt n times before its first forward, so the prompt's tokens would run n times;
    here they run once and the cache rows are repeated (`batch_repeat_interleave`). `generate` then feeds only the
    last prompt token of each of the P*n rows (it skips what the cache holds), samples from the same logits in
    the same row order and so draws the same random numbers: the tokens are those of the plain call up to float
    rounding in the prompt's forward.  [P, L] -> cache of [P*n, L-1]
    """
    ctx, ctx_mask = input_ids[:, :-1], attention[:, :-1]
    cache = model(input_ids=ctx, attention_mask=ctx_mask, position_ids=generation_positions(ctx_mask),
                  use_cache=True, logits_to_keep=1).past_key_values  # no [P, L, V] logits: only the cache is used
    cache.batch_repeat_interleave(n)
    return cache


class HFGenerateEngine:
    """A rollout engine around a `PreTrainedModel` (or a PEFT model wrapping one).

    In the single-process trainer the engine shares the learner's module, so a weight sync only bumps the
    version; a Ray rollout actor owns its copy and receives tensors through `update_weights`.
    """

    def __init__(self, model, pad_id: int, eos_id: int | None, batch_prompts: int = 64, autocast_bf16: bool = False,
                 tokenizer=None, share_prompts: bool = True):
        """`tokenizer`: a tokenizer or the path of a directory holding one (loaded on first use); needed only
        for stop strings, which are matched on decoded text. `share_prompts`: run each prompt's forward once for
        its n samples (`shared_prompt_cache`); False gives `generate`'s own expansion (the reference in tests)."""
        self.model = model
        self.pad_id, self.eos_id = pad_id, eos_id
        self._tokenizer = tokenizer
        self.batch_prompts = batch_prompts
        self.autocast_bf16 = autocast_bf16
        self.share_prompts = share_prompts
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
        ends = self._end_ids(params)
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            do_sample=not greedy,
            pad_token_id=self.pad_id,
            eos_token_id=list(ends) if ends else None,
            output_scores=True,
            return_dict_in_generate=True,
        )
        if not greedy:
            # transformers' own warpers off (its generation_config defaults such as top_k=50 included); ours in
            # vLLM's order: temperature, min-p, top-k, top-p
            kwargs.update(temperature=1.0, top_k=0, top_p=1.0, min_p=None,
                          logits_processor=self._warpers(params))
        decode = None
        if params.stop:
            from transformers import StoppingCriteriaList

            decode = self._decoder()
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(decode, params.stop, width)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            if self.share_prompts and params.n > 1 and width > 1:  # each prompt's forward once, not once per sample
                kwargs.update(num_return_sequences=1,
                              past_key_values=shared_prompt_cache(self.model, input_ids, attention, params.n))
                input_ids, attention = input_ids.repeat_interleave(params.n, 0), attention.repeat_interleave(params.n, 0)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new_tokens = out.sequences[:, width:]  # [P*n, S]
        scores = torch.stack(out.scores, dim=1).float()  # [P*n, S, V] processed logits
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # [P*n, S]
        return self._to_output(prompts, params.n, new_tokens, logprobs, ends, params.stop, decode)

    def _end_ids(self, params: SamplingParams) -> tuple[int, ...]:
        ids = set(params.stop_token_ids)
        if self.eos_id is not None:
            ids.add(int(self.eos_id))
        return tuple(sorted(ids))

    @staticmethod
    def _warpers(params: SamplingParams):
        from transformers import LogitsProcessorList
        from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper,
                                                            TopKLogitsWarper, TopPLogitsWarper)

        warpers = LogitsProcessorList()
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.min_p > 0:
            warpers.append(MinPLogitsWarper(params.min_p))
        if params.top_k_or_off > 0:
            warpers.append(TopKLogitsWarper(params.top_k_or_off))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        return warpers

    def _decoder(self):
        if self._tokenizer is None:
            raise ValueError("stop strings (rollout.stop) need the tokenizer: this HFGenerateEngine was built "
                             "without one. Fix: pass tokenizer= (a tokenizer or its directory)")
        if isinstance(self._tokenizer, str):
            from creditrl.models.build import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer)
        tok = self._tokenizer
        return lambda ids: tok.decode(ids, skip_special_tokens=True)

    def _to_output(self, prompts: list[list[int]], n: int, tokens: Tensor, logprobs: Tensor,
                   ends: tuple[int, ...], stops: tuple[str, ...] = (), decode=None) -> RolloutOutput:
        out = RolloutOutput([], [], [], [], [])
        end_set = set(ends)
        for row in range(tokens.shape[0]):
            toks = tokens[row].tolist()
            cut = next((i for i, t in enumerate(toks) if t in end_set), None)
            if stops:
                hit = first_stop(toks if cut is None else toks[: cut + 1], decode, stops)
                cut = hit if hit is not None else cut
            finished = cut is not None
            length = cut + 1 if finished else len(toks)
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
