"""Peak memory (and time) of one TDPO step: the fused lm_head op vs naive [N, V] logits.

    python bench/preference.py                                   # CPU, the default shapes below (~2 min)
    python bench/preference.py --device cuda --shapes 8192x3584x152064 --dtype bfloat16   # GPU (spec shapes)

One TDPO step on N response tokens (B pairs, N / (2B) tokens per response): per-token log-probs of the policy,
reference log-probs, the full-vocabulary KL(π_ref ‖ π_θ) at every token, the TDPO2 loss (β = 0.1, α = 0.5),
backward to the policy hidden states and lm_head weight. Providers:
    naive   logits = X Wᵀ and ref_logits = X_ref W_refᵀ in float32, log_softmax both, KL = Σ p_ref (log p_ref − log p)
            (the reference implementation's path, algorithms-token-level.md §15.2)
    fused   creditrl.kernels.linear_token_stats(X, W, y, want=("logp", "ref_kl"), ref=(X_ref, W_ref)) + the
            reference log-probs from a second no-grad call (chunked torch on CPU, Triton on CUDA)

Memory: on CUDA, torch.cuda.max_memory_allocated during the step minus the memory allocated before it. On CPU
each (provider, shape) runs in a fresh subprocess and reports the peak RSS of the step above the RSS before it
(VmHWM reset through /proc/self/clear_refs); this includes the weight gradient (V·H·4 bytes), common to both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from creditrl.algorithms.tdpo import tdpo_loss
from creditrl.kernels import linear_token_stats


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS


def make_inputs(n: int, h: int, v: int, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(device, dtype)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    # peaked rows like a trained model: hidden = a * W[y] / |W[y]| + noise (see bench/kernels.py)
    w_y = weight[targets].float()
    hidden = (8.0 * w_y / w_y.norm(dim=-1, keepdim=True) + 0.5 * torch.randn(n, h, generator=g).to(device)).to(dtype)
    ref_hidden = (hidden.float() + 0.1 * torch.randn(n, h, generator=g).to(device)).to(dtype)
    return hidden.requires_grad_(), weight.requires_grad_(), ref_hidden, weight.detach().clone(), targets


def pair_sums(values: torch.Tensor, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] tokens of 2·pairs equal-length responses (chosen first) -> per-pair sums ([pairs], [pairs])."""
    per_seq = values.view(2 * pairs, -1).sum(-1)
    return per_seq[:pairs], per_seq[pairs:]


def tdpo_step(provider: str, hidden, weight, ref_hidden, ref_weight, targets, pairs: int) -> float:
    if provider == "naive":
        logits = (hidden @ weight.T).float()  # [N, V]
        with torch.no_grad():
            ref_lsm = F.log_softmax((ref_hidden @ ref_weight.T).float(), -1)  # [N, V]
        lsm = F.log_softmax(logits, -1)
        logp = lsm.gather(1, targets[:, None]).squeeze(1)
        ref_logp = ref_lsm.gather(1, targets[:, None]).squeeze(1)
        kl = (ref_lsm.exp() * (ref_lsm - lsm)).sum(-1)
    elif provider == "fused":
        stats = linear_token_stats(hidden, weight, targets, want=("logp", "ref_kl"), ref=(ref_hidden, ref_weight))
        with torch.no_grad():
            ref_logp = linear_token_stats(ref_hidden, ref_weight, targets, want=("logp",)).logp
        logp, kl = stats.logp, stats.ref_kl
    else:
        raise ValueError(f"unknown provider {provider!r}")
    m_w, m_l = pair_sums(logp - ref_logp, pairs)
    kl_w, kl_l = pair_sums(kl, pairs)
    loss = tdpo_loss(m_w, m_l, kl_w, kl_l, beta=0.1, alpha=0.5, variant="tdpo2").loss.mean()
    loss.backward()
    return float(loss)


def measure(provider: str, n: int, h: int, v: int, device: str, dtype: torch.dtype, pairs: int) -> dict:
    torch.manual_seed(0)
    inputs = make_inputs(n, h, v, device, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = tdpo_step(provider, *inputs, pairs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        _reset_peak()
        before = _status_kib("VmHWM")
        t0 = time.perf_counter()
        loss = tdpo_step(provider, *inputs, pairs)
        seconds = time.perf_counter() - t0
        peak_mib = (_status_kib("VmHWM") - before) / 1024
    return {"provider": provider, "N": n, "H": h, "V": v, "device": device, "dtype": str(dtype).split(".")[-1],
            "peak_mib": round(peak_mib, 1), "seconds": round(seconds, 3), "loss": loss,
            "naive_logits_mib": round(n * v * 4 / 2**20, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--shapes", nargs="+", default=["1024x896x151936", "2048x896x32768"], help="NxHxV")
    p.add_argument("--pairs", type=int, default=8, help="pairs per step (N must be divisible by 2*pairs)")
    p.add_argument("--providers", nargs="+", default=["fused", "naive"])
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: provider:NxHxV in this process
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.one is not None:
        provider, shape = args.one.split(":")
        n, h, v = map(int, shape.split("x"))
        print(json.dumps(measure(provider, n, h, v, args.device, dtype, args.pairs)))
        return
    rows = []
    for shape in args.shapes:
        for provider in args.providers:
            if args.device == "cpu":  # fresh process per measurement: clean peak RSS
                cmd = [sys.executable, __file__, "--one", f"{provider}:{shape}", "--dtype", args.dtype,
                       "--pairs", str(args.pairs)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                row = json.loads(out)
            else:
                n, h, v = map(int, shape.split("x"))
                row = measure(provider, n, h, v, args.device, dtype, args.pairs)
                torch.cuda.empty_cache()
            rows.append(row)
            print(f"{provider:6s} N={row['N']:6d} H={row['H']:5d} V={row['V']:7d}  peak {row['peak_mib']:9.1f} MiB  "
                  f"time {row['seconds']:7.3f}s  loss {row['loss']:.6f}  ([N,V] fp32 = {row['naive_logits_mib']} MiB)",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
