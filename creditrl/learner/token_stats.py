"""Per-token statistics of a micro-batch from a causal LM, without materialising [tokens, vocab] logits.

The decoder body runs once to produce hidden states; only the hidden states that predict response tokens are
gathered ([N, H]) and handed with the lm_head weight to `creditrl.kernels.linear_token_stats`, which streams
over the vocabulary in bounded chunks (Triton on CUDA, chunked torch on CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from creditrl.kernels import linear_token_stats
from creditrl.learner.batch import MicroBatch, model_inputs, response_columns, scatter_tokens


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder body returning last_hidden_state, lm_head) of a causal LM, unwrapping PEFT if present."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def compiled_decoder(model):
    """`torch.compile` of the model's decoder body (`model.compile`): a wrapper that shares its parameters, so
    the model's state dict, checkpoints and weight sync are untouched, and generation keeps the eager module.
    Shapes change every step (packed widths), hence dynamic shapes."""
    return torch.compile(decoder_and_head(model)[0], dynamic=True)


def micro_batch_token_stats(
    model, mb: MicroBatch, temperature: float, want: tuple[str, ...], autocast_bf16: bool = False,
    kernel_options: dict | None = None, keep_hidden: bool = False, decoder=None,
) -> dict[str, Tensor]:
    """Stats named in `want` (e.g. "logp", "entropy") as response-aligned [b, T] fp32 tensors.

    Gradients flow when called with grad enabled. `keep_hidden` also returns "hidden" [b, T, H] (detached).
    `decoder`: the module to run instead of the model's own decoder body (`compiled_decoder`).
    """
    own, head = decoder_and_head(model)
    decoder = decoder if decoder is not None else own
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
        hidden = decoder(**model_inputs(mb, own)).last_hidden_state  # [r, L, H]
    h = mb.gather(hidden)  # [N, H]
    stats = linear_token_stats(h, head.weight, mb.targets, temperature=temperature, want=want,
                               **(kernel_options or {}))
    out: dict[str, Tensor] = {}
    for name in want:
        value = getattr(stats, name, None)
        if value is None:
            raise ValueError(f"the kernel op did not return '{name}'")
        out[name] = scatter_tokens(value.float(), mb)
    if keep_hidden:
        hb = torch.zeros(*mb.mask.shape, h.shape[-1], dtype=torch.float32)
        out["hidden"] = hb.index_put((mb.rows, response_columns(mb)), h.detach().float())
    return out

