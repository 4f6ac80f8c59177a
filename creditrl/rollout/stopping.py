"""When a response ends: end tokens and stop strings, the same rule in every engine.

End tokens: the union of the tokenizer's `eos_token_id`, the `eos_token_id` of the model directory's
`generation_config.json` (an int or a list: chat models declare several, e.g. `<|im_end|>` and
`<|endoftext|>`) and `rollout.stop_token_ids`. A response that produces one of them ends there and keeps it
(as it always kept EOS): `finished` is True, the end token is a response token (masked in, scored, trained on).

Stop strings (`rollout.stop`): a response ends at the first token after which its decoded text (special tokens
skipped) contains one of them. That token is kept, so the stop string stays in the response (a token that
completes a stop string and carries more text is kept whole). vLLM does the same with
`include_stop_str_in_output=True` (its token ids always end at the completing token); the HF engine checks
the decoded tail of each row after every step (`first_stop`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch


def model_end_token_ids(model_path: str | None) -> list[int]:
    """The `eos_token_id` (int or list) of `model_path/generation_config.json`; [] when absent."""
    if not model_path:
        return []
    p = Path(model_path) / "generation_config.json"
    if not p.is_file():
        return []
    try:
        eos = json.loads(p.read_text()).get("eos_token_id")
    except (OSError, ValueError):
        return []
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def end_token_ids(tokenizer_eos: int | None, model_path: str | None = None,
                  extra: Sequence[int] = ()) -> tuple[int, ...]:
    """Every token that ends a response, sorted: tokenizer EOS + generation_config eos list + `extra`."""
    ids = set(model_end_token_ids(model_path)) | {int(t) for t in extra}
    if tokenizer_eos is not None:
        ids.add(int(tokenizer_eos))
    return tuple(sorted(ids))


def stop_window(stops: Sequence[str]) -> int:
    """Tokens decoded to look for a stop string completed by the newest token (a token is >= 1 character;
    slack for byte-level tokens that decode to partial characters)."""
    return max(len(s) for s in stops) + 4


def first_stop(tokens: Sequence[int], decode: Callable[[list[int]], str], stops: Sequence[str]) -> int | None:
    """Index of the first token after which the decoded text contains a stop string (None: none does)."""
    if not stops:
        return None
    w = stop_window(stops)
    for t in range(len(tokens)):
        tail = decode(list(tokens[max(0, t + 1 - w): t + 1]))
        if any(s in tail for s in stops):
            return t
    return None


class StopStringCriteria:
    """`transformers` stopping criterion (per row): True once the newest token completes a stop string.
    Rows stopped here are padded by `generate`; the engine then cuts each row with `first_stop`."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str], prompt_width: int):
        self.decode, self.stops, self.width = decode, list(stops), prompt_width
        self.window = stop_window(stops)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.width:]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(new.shape[0]):
            tail = self.decode(new[row, -self.window:].tolist())
            done[row] = any(s in tail for s in self.stops)
        return done


def stop_kwargs(cfg, tokenizer) -> dict:
    """`SamplingParams` end tokens and stop strings of a recipe: tokenizer EOS + model.path's generation_config
    eos list + rollout.stop_token_ids, and rollout.stop."""
    rc = cfg.rollout
    return dict(stop_token_ids=end_token_ids(getattr(tokenizer, "eos_token_id", None), cfg.model.path,
                                             rc.stop_token_ids),
                stop=tuple(rc.stop))
