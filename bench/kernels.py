"""lm_head statistics: peak memory and forward+backward time of naive, compiled, chunked, Triton and Liger.

    python bench/kernels.py --preset cpu                  # CPU: small + target shape, ~3-5 minutes on 2 cores
    taskset -c 1 env OMP_NUM_THREADS=1 python bench/kernels.py --preset cpu-target --reps 7 \
        --providers gemm,gemm-bf16,naive,compile,chunked,naive-bf16,compile-bf16,compile-autocast,chunked-bf16
    python bench/kernels.py --preset gpu --json out.json  # GPU: Qwen2.5-0.5B/1.5B/7B shapes (spec kernels.md §11)

Every provider computes per-token logp and entropy (Liger FLCE: logp only, i.e. CE) of `softmax(X W^T / T)` and
backpropagates a loss with random per-token weights, like a policy-gradient step. Providers:
    naive     logits = X @ W^T, .float(), log_softmax, gather, entropy (the unfused verl/TRL path)
    compile   torch.compile(naive, fullgraph=True, dynamic=False)
    chunked   creditrl chunked torch path (default chunk, and a 4x larger chunk)
    chunked-bf16bwd  chunked with gemm_precision="bf16-backward": fp32 forward GEMM (fp32-exact statistics),
              bf16-operand recompute / dX / dW GEMMs
    *-bf16    the same provider with torch's switch for bf16 fp32-matmuls on CPU
              (torch.backends.mkldnn.matmul.fp32_precision = "bf16", i.e. float32 matmul precision "medium"):
              GEMM operands rounded to bf16, fp32 accumulation and fp32 logits; fp32 inputs (master weights)
    compile-autocast  compile under torch.autocast("cpu", bfloat16): bf16 GEMMs with bf16 logits, then fp32
    triton    creditrl Triton path (CUDA only)
    liger     Liger FLCE with reduction="none" (logp only), when `liger_kernel` is importable (CUDA only)
    gemm      the bare lm_head GEMMs: X @ W^T, dZ @ W, dZ^T @ X (the roofline; time only); gemm-bf16 with the
              bf16 switch (the roofline of the bf16 rows)

Accuracy: max |delta logp| and |delta H| against float64 on 64 rows of the call, and the relative error
||g - g64|| / ||g64|| of dX and dW on a 512-row call of the same provider against float64 naive.

Efficiency (kernels.md §7.4): time / bare-GEMM time (of the same precision), useful TFLOP/s = 6NHV / t, as a
fraction of the measured matmul peak (an 8192^3 bf16 matmul on GPU; 2048^3 fp32 and bf16 matmuls on CPU), and HFU with the
8NHV a recomputing backward performs.

Memory: on CUDA, max_memory_allocated during the call minus the memory allocated before it. On CPU each
provider runs in a fresh subprocess and reports the peak RSS of one call above the RSS before it (VmHWM after
resetting it through /proc/self/clear_refs), which includes the weight gradient.

Inputs are peaked like a trained model's: hidden = a * W[y] / |W[y]| + noise, with `--target-logit` a; the entropy
quantiles of the input are printed with the results.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from creditrl.kernels import linear_token_stats
from machine import cpu_model  # bench/machine.py (the script's folder is on sys.path)


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    h: int
    v: int

    @property
    def useful_flops(self) -> float:
        return 6.0 * self.n * self.h * self.v


PRESETS: dict[str, list[Shape]] = {
    "cpu": [Shape("cpu-small", 512, 256, 32768), Shape("cpu-target", 4096, 896, 32000)],
    "cpu-quick": [Shape("cpu-quick", 256, 128, 8192)],
    "cpu-target": [Shape("cpu-target", 4096, 896, 32000)],
    "gpu": [
        *(Shape(f"qwen2.5-0.5b N={n}", n, 896, 151936) for n in (2048, 8192, 16384, 32768)),
        *(Shape(f"qwen2.5-1.5b N={n}", n, 1536, 151936) for n in (2048, 8192, 16384, 32768)),
        *(Shape(f"qwen2.5-7b N={n}", n, 3584, 152064) for n in (2048, 8192, 16384, 32768)),
        Shape("qwen2.5-1.5b ragged", 16383, 1536, 151936),
    ],
}
PROVIDERS = ("gemm", "naive", "compile", "chunked", "chunked-4x", "triton", "liger")
# Extra CPU variants (opt-in through --providers): bf16 GEMM operands (fp32 logits) and bf16 autocast.
BF16_PROVIDERS = ("gemm-bf16", "naive-bf16", "compile-bf16", "chunked-bf16", "compile-autocast",
                  "chunked-bf16bwd")


def base_provider(provider: str) -> str:
    """The provider without its precision suffix ("chunked-bf16" -> "chunked")."""
    return provider.removesuffix("-bf16").removesuffix("-autocast").removesuffix("-bf16bwd")


def provider_precision(provider: str) -> str:
    """"fp32", "bf16" (bf16 GEMM operands, fp32 logits), "autocast" (bf16 GEMMs and logits) or "bf16bwd"
    (chunked only: fp32 forward GEMM, bf16-operand backward GEMMs; gemm_precision="bf16-backward")."""
    for suffix in ("bf16", "autocast", "bf16bwd"):
        if provider.endswith("-" + suffix):
            return suffix
    return "fp32"


def with_precision(fn, precision: str):
    """`fn` run under the provider's matmul precision (the global switch is restored after each call)."""
    if precision == "fp32":
        return fn
    if precision == "bf16bwd":
        from creditrl.kernels import chunked

        def run_bf16bwd(*a, **k):
            old = chunked.DEFAULT_GEMM_PRECISION
            chunked.DEFAULT_GEMM_PRECISION = "bf16-backward"
            try:
                return fn(*a, **k)
            finally:
                chunked.DEFAULT_GEMM_PRECISION = old
        return run_bf16bwd
    if precision == "autocast":
        def run_autocast(*a, **k):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(*a, **k)
        return run_autocast

    def run_bf16(*a, **k):
        old = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            return fn(*a, **k)
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = old
    return run_bf16


# ----------------------------------------------------------------------------------------------- inputs


def make_inputs(shape: Shape, device: str, dtype: torch.dtype, target_logit: float, seed: int = 0):
    """hidden [N, H] = a W[y] / |W[y]| + N(0, 1), weight [V, H] ~ N(0, 1/H), targets [N], upstream weights [2, N]."""
    g = torch.Generator(device=device).manual_seed(seed)
    weight = torch.randn(shape.v, shape.h, device=device, generator=g) / shape.h**0.5
    targets = torch.randint(0, shape.v, (shape.n,), device=device, generator=g)
    w_y = weight[targets]
    hidden = target_logit * w_y / w_y.norm(dim=1, keepdim=True) + torch.randn(shape.n, shape.h, device=device,
                                                                               generator=g)
    upstream = torch.randn(2, shape.n, device=device, generator=g)
    return (hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_(), targets, upstream)


def naive_logp_entropy(hidden, weight, targets, temperature: float):
    """The unfused baseline: materialised fp32 logits, log_softmax, gather, entropy."""
    logits = (hidden @ weight.T).float() / temperature  # [N, V]
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def make_step(provider: str, hidden, weight, targets, upstream, temperature: float, chunk_size: int | None):
    """A closure running one forward + backward of `provider`, and one returning (logp, entropy) without grad."""
    precision = provider_precision(provider)
    provider = base_provider(provider)
    if provider in ("naive", "compile"):
        fn = naive_logp_entropy
        if provider == "compile":
            fn = torch.compile(naive_logp_entropy, fullgraph=True, dynamic=False)

        def stats():
            return fn(hidden, weight, targets, temperature)
    elif provider in ("chunked", "chunked-4x", "triton"):
        backend = "triton" if provider == "triton" else "chunked"

        def stats():
            s = linear_token_stats(hidden, weight, targets, temperature=temperature, backend=backend,
                                   chunk_size=chunk_size)
            return s.logp, s.entropy
    elif provider == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")
        scaled = hidden if temperature == 1.0 else None
        if scaled is None:
            raise RuntimeError("Liger FLCE has no temperature argument; benchmark it at T = 1")

        def stats():
            logp = -loss_fn(weight, scaled, targets)
            return logp, None
    else:
        raise ValueError(provider)

    def step():
        logp, entropy = stats()
        loss = (logp * upstream[0]).sum()
        if entropy is not None:
            loss = loss + (entropy * upstream[1]).sum() * 0.01
        loss.backward()
        hidden.grad = None
        weight.grad = None

    return with_precision(step, precision), with_precision(stats, precision)


def grad_accuracy(provider: str, shape: "Shape", device: str, dtype: torch.dtype, temperature: float,
                  target_logit: float, rows: int = 512) -> dict[str, float]:
    """Relative error of dX and dW of `provider` on a `rows`-row call against float64 naive (same loss)."""
    small = Shape(shape.name, min(rows, shape.n), shape.h, shape.v)
    hidden, weight, targets, upstream = make_inputs(small, device, dtype, target_logit, seed=1)
    step, _ = make_step(provider, hidden, weight, targets, upstream, temperature, None)
    grads = {}

    def keep_grads():  # the step clears .grad; capture it through hooks instead
        grads["x"], grads["w"] = None, None
        hx = hidden.register_hook(lambda g: grads.__setitem__("x", g.detach().clone()))
        hw = weight.register_hook(lambda g: grads.__setitem__("w", g.detach().clone()))
        try:
            step()
        finally:
            hx.remove()
            hw.remove()

    keep_grads()
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    logp_all = torch.log_softmax((h64 @ w64.T) / temperature, dim=-1)  # float64 throughout (no .float())
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    loss = (logp * upstream[0].double()).sum()
    if provider != "liger":
        loss = loss + (entropy * upstream[1].double()).sum() * 0.01
    ref_x, ref_w = torch.autograd.grad(loss, (h64, w64))

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm().clamp_min(1e-30))

    return {"rel_err_dx": rel(grads["x"], ref_x), "rel_err_dw": rel(grads["w"], ref_w)}


def make_gemm_step(hidden, weight, precision: str = "fp32"):
    """The bare lm_head GEMMs of one step (forward logits, dX, dW) on random operands of the same shape."""
    d_z = torch.randn(hidden.shape[0], weight.shape[0], device=hidden.device, dtype=hidden.dtype)

    def step():
        hidden.detach() @ weight.detach().T
        d_z @ weight.detach()
        d_z.T @ hidden.detach()

    return with_precision(step, precision)


# ------------------------------------------------------------------------------------------- measurement


def _proc_status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def _release_cpu_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_memory_mib(step, device: str) -> float:
    """Peak memory of one call above the memory in use before it (MiB)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    _release_cpu_memory()
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    step()
    return (_proc_status_kib("VmHWM") - before) / 1024


def time_ms(step, device: str, reps: int, cpu_ms: list[float] | None = None) -> list[float]:
    """Wall ms per call (CUDA events on GPU); on CPU, the process CPU ms of each call go to `cpu_ms` too."""
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
            if cpu_ms is not None:
                cpu_ms.append((time.process_time() - c0) * 1e3)
    return times


def matmul_peak_tflops(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul throughput: 8192^3 on GPU, 2048^3 on CPU (median of a few reps)."""
    size = 8192 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    step = lambda: a @ b  # noqa: E731
    time_ms(step, device, 2)
    ms = statistics.median(time_ms(step, device, 10 if device == "cuda" else 3))
    return 2 * size**3 / (ms * 1e-3) / 1e12


def accuracy(stats_fn, hidden, weight, targets, temperature: float, rows: int = 64) -> dict[str, float]:
    """Max |delta logp| and |delta H| against float64 on a subsample of rows."""
    with torch.no_grad():
        logp, entropy = stats_fn()
        idx = torch.arange(0, hidden.shape[0], max(1, hidden.shape[0] // rows), device=hidden.device)
        z = (hidden[idx].double() @ weight.double().T) / temperature
        ref_logp_all = torch.log_softmax(z, -1)
        ref_logp = ref_logp_all.gather(1, targets[idx, None]).squeeze(1)
        out = {"max_abs_dlogp": float((logp[idx].double() - ref_logp).abs().max())}
        if entropy is not None:
            ref_h = -(ref_logp_all.exp() * ref_logp_all).sum(-1)
            out["max_abs_dentropy"] = float((entropy[idx].double() - ref_h).abs().max())
        return out


def entropy_quantiles(hidden, weight, targets, temperature: float) -> dict[str, float]:
    with torch.no_grad():
        s = linear_token_stats(hidden, weight, targets, temperature=temperature, backend="chunked")
    q = torch.quantile(s.entropy.float(), torch.tensor([0.1, 0.5, 0.9], device=s.entropy.device))
    return {"entropy_p10": float(q[0]), "entropy_p50": float(q[1]), "entropy_p90": float(q[2]),
            "entropy_mean": float(s.entropy.mean())}


def _setup(provider: str, shape: Shape, device: str, temperature: float, inputs):
    """The (step, stats) closures of one provider on `inputs`; a warm-up call (compilation) is timed."""
    hidden, weight, targets, upstream = inputs
    if base_provider(provider) == "gemm":
        step, stats_fn = make_gemm_step(hidden, weight, provider_precision(provider)), None
    else:
        chunk = None
        if provider == "chunked-4x":
            from creditrl.kernels.chunked import DEFAULT_WORKSPACE_BYTES_CPU, DEFAULT_WORKSPACE_BYTES_CUDA, \
                default_chunk_rows

            budget = DEFAULT_WORKSPACE_BYTES_CUDA if device == "cuda" else DEFAULT_WORKSPACE_BYTES_CPU
            chunk = default_chunk_rows(shape.n, shape.v, hidden.device, workspace_bytes=4 * budget)
        step, stats_fn = make_step(provider, hidden, weight, targets, upstream, temperature, chunk)
    t0 = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return step, stats_fn, time.perf_counter() - t0


def measure_memory(provider: str, shape: Shape, device: str, dtype: torch.dtype, temperature: float,
                   target_logit: float) -> dict:
    """First-call time, peak memory of one call, and accuracy of one provider at one shape."""
    result: dict = {"provider": provider, "shape": asdict(shape)}
    try:
        inputs = make_inputs(shape, device, dtype, target_logit)
        step, stats_fn, first = _setup(provider, shape, device, temperature, inputs)
        result["first_call_s"] = first
        if stats_fn is not None:
            result["peak_mib"] = peak_memory_mib(step, device)
            del step
            _free(device)
            try:
                result.update(accuracy(stats_fn, *inputs[:3], temperature))
                del inputs, stats_fn
                _free(device)
                result.update(grad_accuracy(provider, shape, device, dtype, temperature, target_logit))
            except Exception as exc:  # e.g. OOM of a materialising provider's extra no-grad call
                result["accuracy_error"] = _describe(exc)
    except Exception as exc:  # a baseline that does not run here (OOM, no compiler, ...) is reported, not fatal
        result["error"] = _describe(exc)
    return result


def measure_times(providers: list[str], shape: Shape, device: str, dtype: torch.dtype, temperature: float,
                  reps: int, target_logit: float) -> dict[str, list[float]]:
    """fwd+bwd times (ms) of several providers on shared inputs, interleaved rep by rep so that load changes
    hit all providers alike. A provider that fails is dropped (measure_memory reports why). On CPU the process
    CPU times come back too, under "<provider>#cpu" (with one thread: wall time minus time other processes
    held the core)."""
    inputs = make_inputs(shape, device, dtype, target_logit)
    steps = {}
    for provider in providers:
        try:
            steps[provider] = _setup(provider, shape, device, temperature, inputs)[0]
        except Exception:
            _free(device)
    times: dict[str, list[float]] = {p: [] for p in steps}
    cpu: dict[str, list[float]] = {p: [] for p in steps}
    for _ in range(reps):
        for provider in list(steps):
            try:
                times[provider] += time_ms(steps[provider], device, 1, cpu[provider] if device == "cpu" else None)
            except Exception:
                del steps[provider]
                _free(device)
    out = {p: t for p, t in times.items() if len(t) == reps}
    out.update({f"{p}#cpu": cpu[p] for p in out if len(cpu.get(p, [])) == reps})
    return out


def _describe(exc: Exception) -> str:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


# --------------------------------------------------------------------------------------------- reporting


def machine_description(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "torch_threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    else:
        info.update(cpu=cpu_model(), cpu_count=os.cpu_count(), affinity=sorted(os.sched_getaffinity(0)))
    return info


def markdown_table(results: list[dict], peak_tflops: float, peak_tflops_bf16: float | None = None,
                   threads: int | None = None, by_cpu_time: bool = False) -> str:
    """One row per (shape, provider), with times relative to that shape's bare GEMMs of the same precision
    (gemm-bf16 for the bf16 / autocast rows when it was measured) and peaks of the same precision. The
    ratio and throughput columns use the wall median, or the CPU-time median with `by_cpu_time` (a shared
    core: the time other processes held it is not counted)."""
    threads = torch.get_num_threads() if threads is None else threads
    lines = [f"| shape (N, H, V) | provider ({threads} thread{'s' if threads != 1 else ''}) | "
             "fwd+bwd median ms (p20-p80) | CPU-time median ms (p20-p80) | peak MiB | x bare GEMMs | "
             "useful TFLOP/s (6NHV) | % of matmul peak | HFU (8NHV) % | max abs dlogp | max abs dH | "
             "rel err dX | rel err dW |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    key = "median_cpu_ms" if by_cpu_time else "median_ms"
    gemm_ms = {(r["shape"]["name"], provider_precision(r["provider"]) != "fp32"): r.get(key)
               for r in results if base_provider(r["provider"]) == "gemm"}
    nan = float("nan")
    for r in results:
        s = r["shape"]
        label = f"{s['name']} ({s['n']}, {s['h']}, {s['v']})"
        if "error" in r:
            lines.append(f"| {label} | {r['provider']} | failed: {r['error']} | | | | | | | | | | |")
            continue
        low = provider_precision(r["provider"]) != "fp32"
        peak = peak_tflops_bf16 if low and peak_tflops_bf16 else peak_tflops
        ms = r.get(key) or r["median_ms"]
        flops = 6.0 * s["n"] * s["h"] * s["v"]
        cpu_col = (f"{r['median_cpu_ms']:.1f} ({r['p20_cpu_ms']:.1f}-{r['p80_cpu_ms']:.1f})"
                   if "median_cpu_ms" in r else "")
        useful = flops / (ms * 1e-3) / 1e12
        base = gemm_ms.get((s["name"], low)) or gemm_ms.get((s["name"], False))
        ratio = ms / base if base else nan
        recompute = base_provider(r["provider"]) in ("chunked", "chunked-4x", "triton")
        hfu = (8.0 / 6.0 if recompute else 1.0) * useful / peak * 100
        lines.append(
            f"| {label} | {r['provider']} | {r['median_ms']:.1f} ({r['p20_ms']:.1f}-{r['p80_ms']:.1f}) | {cpu_col} | "
            f"{r.get('peak_mib', nan):.0f} | {ratio:.2f} | {useful:.3f} | {useful / peak * 100:.1f} | "
            f"{hfu:.1f} | {r.get('max_abs_dlogp', nan):.1e} | {r.get('max_abs_dentropy', nan):.1e} | "
            f"{r.get('rel_err_dx', nan):.1e} | {r.get('rel_err_dw', nan):.1e} |")
    return "\n".join(lines)


def _worker(args, reps: int, spec: str):
    """Run one measurement in a fresh interpreter (CPU: isolates peak RSS) and parse its JSON result."""
    cmd = [sys.executable, __file__, "--preset", args.preset, "--reps", str(reps), "--temperature",
           str(args.temperature), "--target-logit", str(args.target_logit), "--worker", spec]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if line:
        return json.loads(line[-1][len("RESULT "):])
    provider = spec.split(":")[1]
    return {"provider": provider, "shape": json.loads(spec.split(":", 2)[2]),
            "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=None, help="timed reps (default 3 on CPU, 20 on GPU)")
    parser.add_argument("--target-logit", type=float, default=15.0)
    parser.add_argument("--json", default=None, help="write all results as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one provider, one shape
    args = parser.parse_args()

    device = "cuda" if args.preset.startswith("gpu") else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    reps = args.reps or (20 if device == "cuda" else 3)

    if args.worker is not None:  # CPU subprocess: "mem:<provider>:<shape>" or "time:<p1,p2,...>:<shape>"
        kind, what, shape_json = args.worker.split(":", 2)
        shape = Shape(**json.loads(shape_json))
        if kind == "mem":
            res = measure_memory(what, shape, device, dtype, args.temperature, args.target_logit)
        else:
            res = measure_times(what.split(","), shape, device, dtype, args.temperature, reps, args.target_logit)
        print("RESULT " + json.dumps(res))
        return

    providers = [p for p in args.providers.split(",") if p]
    if device == "cpu":
        providers = [p for p in providers if p not in ("triton", "liger")]  # GPU-only kernels
    else:
        providers = [p for p in providers if p not in BF16_PROVIDERS]  # CPU precision variants
    peak = matmul_peak_tflops(device, dtype)
    peak_bf16 = matmul_peak_tflops(device, torch.bfloat16) if device == "cpu" else peak
    results = []
    for shape in PRESETS[args.preset]:
        hidden, weight, targets, _ = make_inputs(shape, device, dtype, args.target_logit)
        quant = entropy_quantiles(hidden, weight, targets, args.temperature)
        del hidden, weight, targets
        print(f"## {shape}: input entropy {quant}", flush=True)
        if device == "cpu":  # one process per memory measurement, one for the interleaved timing
            mems = [_worker(args, reps, f"mem:{p}:{json.dumps(asdict(shape))}") for p in providers]
            times = _worker(args, reps, f"time:{','.join(providers)}:{json.dumps(asdict(shape))}")
        else:
            mems = []
            for p in providers:
                mems.append(measure_memory(p, shape, device, dtype, args.temperature, args.target_logit))
                torch.cuda.empty_cache()
            times = measure_times(providers, shape, device, dtype, args.temperature, reps, args.target_logit)
        for res in mems:
            t = times.get(res["provider"]) if isinstance(times, dict) else None
            if t:
                res.update(median_ms=statistics.median(t), p20_ms=_quantile(t, 0.2), p80_ms=_quantile(t, 0.8),
                           reps=len(t), times_ms=t)
                c = times.get(res["provider"] + "#cpu")
                if c:
                    res.update(median_cpu_ms=statistics.median(c), p20_cpu_ms=_quantile(c, 0.2),
                               p80_cpu_ms=_quantile(c, 0.8), cpu_times_ms=c)
            elif "error" not in res:
                res["error"] = "timing failed"
            res["input"] = quant
            results.append(res)
            print(json.dumps(res), flush=True)
    report = {"machine": machine_description(device), "dtype": str(dtype), "temperature": args.temperature,
              "matmul_peak_tflops": peak, "matmul_peak_tflops_bf16": peak_bf16, "results": results}
    print()
    print(json.dumps(report["machine"]))
    print(f"measured matmul peak: {peak:.3f} TFLOP/s ({dtype}); bf16: {peak_bf16:.3f} TFLOP/s; "
          f"torch threads: {torch.get_num_threads()}, affinity {report['machine'].get('affinity')}")
    print(markdown_table(results, peak, peak_bf16))
    if device == "cpu":
        print("\nratios and throughput from CPU time:")
        print(markdown_table(results, peak, peak_bf16, by_cpu_time=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
