"""Where bf16 autocast pays on this CPU: forward + backward of a 2-layer Llama at several widths, fp32 vs bf16
autocast, one thread, alternating. The crossover sets `model.autocast_bf16: null` (creditrl/models/precision.py).

    python bench/bf16_autocast.py [--widths 128 256 512 896] [--tokens 16x64] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)
from transformers import LlamaConfig, LlamaForCausalLM

from creditrl.kernels.chunked import cpu_fast_bf16


def step_s(model, ids, bf16: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.model(input_ids=ids).last_hidden_state
    hidden.float().square().mean().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 896])
    ap.add_argument("--tokens", default="16x64", help="rows x columns of the batch")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, cols = (int(x) for x in args.tokens.split("x"))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, torch {torch.__version__}, "
          f"1 thread, native bf16 matmul: {cpu_fast_bf16()}")
    print("| hidden | fp32 ms | bf16 autocast ms | bf16 / fp32 |\n|---|---|---|---|")
    for width in args.widths:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=1000, hidden_size=width, intermediate_size=3 * width, num_hidden_layers=2,
                          num_attention_heads=max(width // 64, 2), num_key_value_heads=max(width // 128, 1))
        model = LlamaForCausalLM(cfg)
        ids = torch.randint(0, 1000, (rows, cols))
        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in (False, True):
            step_s(model, ids, bf16)  # warm-up
        for _ in range(args.reps):
            for bf16 in (False, True):  # alternating
                times[bf16].append(step_s(model, ids, bf16))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {width} | {fp32 * 1e3:.1f} | {bf16 * 1e3:.1f} | {bf16 / fp32:.2f} |", flush=True)


if __name__ == "__main__":
    main()
