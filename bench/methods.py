"""Compare GRPO with every RL method recipe on the tiny task: same steps, seeds, eval prompts and overrides.

For each `creditrl/recipes/tiny_*.yaml` that is an RL recipe (no `preference:` / `resources:` section, not the
Ray or DPO-family recipes) and passes `creditrl config validate`, run `creditrl train` from one shared SFT
warm start, then write a table and PNG curves (held-out greedy accuracy, pass@k, policy entropy, clip fraction vs
step) to docs/methods.md and docs/methods/*.png.

    python bench/methods.py [--methods grpo steer dcpo ...] [--steps 40] [--seeds 0] [--eval-every 10]
                            [--eval-prompts 100] [--pass-k 8] [--extra train.lr=1e-4 ...] [--out DIR]
    python bench/methods.py --report-only --out DIR ...   # re-plot and re-write the doc from finished runs

Runs one at a time with OMP_NUM_THREADS=1 (the bench machine is shared). A method whose run fails is listed in
the doc with its error instead of numbers; the other methods still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from machine import cpu_model  # noqa: E402  bench/machine.py (the script's folder is on sys.path)

log = logging.getLogger("bench.methods")

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "creditrl" / "recipes"
CLI = [sys.executable, "-m", "creditrl.cli"]
SKIP_PREFIXES = ("tiny_grpo_ray", "tiny_dpo", "tiny_tdpo", "tiny_cdpo")
NON_RL_SECTIONS = re.compile(r"^(preference|resources):", re.MULTILINE)


@dataclass
class RunResult:
    """What one (method, seed) run produced: per-step rows of metrics.jsonl, or the error text."""

    method: str
    seed: int
    rows: list[dict] = field(default_factory=list)
    error: str | None = None
    wall_s: float = float("nan")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def discover_methods() -> list[str]:
    """Method names (recipe file `tiny_X.yaml` -> `X`) of every RL recipe, GRPO first."""
    names = []
    for path in sorted(RECIPES.glob("tiny_*.yaml")):
        if path.stem.startswith(SKIP_PREFIXES) or NON_RL_SECTIONS.search(path.read_text()):
            continue
        names.append(path.stem.removeprefix("tiny_"))
    return sorted(names, key=lambda n: (n != "grpo", n))


def validates(method: str, overrides: list[str]) -> str | None:
    """None if the recipe loads and validates with these overrides (what `creditrl config validate` checks, done
    in-process: one interpreter start per recipe costs ~15 s on the loaded bench machine), else the error."""
    from creditrl.config import load_config

    try:
        load_config(f"tiny_{method}", overrides)
    except Exception as e:  # noqa: BLE001 - any load/validation error means: skip this recipe, say why
        return f"{type(e).__name__}: {e}"
    return None


def build_tiny(tiny: Path) -> None:
    """The tiny task and its SFT warm start, built once and shared by every method (skipped if present)."""
    if (tiny / "sft").exists():
        return
    data = [f"data.train_files=[{tiny}/data/train.jsonl]", f"data.eval_files=[{tiny}/data/eval.jsonl]"]
    subprocess.run(CLI + ["tiny", "init", "--out", str(tiny), "--force"], check=True, env=_env(), cwd=REPO)
    subprocess.run(CLI + ["sft", "tiny_grpo", f"sft.init_path={tiny}/base", f"sft.output_path={tiny}/sft", *data,
                          "logging.progress=false"], check=True, env=_env(), cwd=REPO)


def train_overrides(tiny: Path, args: argparse.Namespace) -> list[str]:
    """Overrides applied identically to every method (besides seed and output_dir)."""
    return [f"model.path={tiny}/sft", f"data.train_files=[{tiny}/data/train.jsonl]",
            f"data.eval_files=[{tiny}/data/eval.jsonl]", f"train.steps={args.steps}",
            f"eval.every_steps={args.eval_every}", f"eval.max_prompts={args.eval_prompts}",
            f"eval.pass_k={args.pass_k}", "logging.progress=false", *args.extra]


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_one(method: str, seed: int, out: Path, overrides: list[str], rerun: bool) -> RunResult:
    """Train `tiny_<method>` for one seed; reuse a finished run (one with a `final/greedy_acc` row) unless rerun."""
    run_dir = out / f"{method}-seed{seed}"
    rows = read_rows(run_dir)
    if not rerun and any("final/greedy_acc" in r for r in rows):
        return RunResult(method, seed, rows)
    t0 = time.perf_counter()
    proc = subprocess.run(CLI + ["train", f"tiny_{method}", *overrides, f"output_dir={run_dir}", f"seed={seed}"],
                          capture_output=True, text=True, env=_env(), cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return RunResult(method, seed, error=(proc.stderr or proc.stdout).strip()[-600:], wall_s=wall)
    return RunResult(method, seed, read_rows(run_dir), wall_s=wall)


# --- reading the curves ---------------------------------------------------------------------------------------


def pass_key(rows: list[dict]) -> str:
    """The `pass@K` name this run logged (K from eval.pass_k)."""
    return next((k.split("/", 1)[1] for r in rows for k in r if k.startswith("eval/pass@")), "pass@k")


def eval_curve(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a held-out metric: step-0 and periodic `eval/<name>` rows, then the `final/<name>` row."""
    pts: dict[int, float] = {}
    for r in rows:
        for prefix in ("eval/", "final/"):
            if prefix + name in r:
                pts[int(r["step"])] = float(r[prefix + name])
    steps = sorted(pts)
    return steps, [pts[s] for s in steps]


def train_curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a per-step training metric (rows without it, e.g. eval-only rows, are skipped)."""
    pts = [(int(r["step"]), float(r[key])) for r in rows if key in r and "final/greedy_acc" not in r]
    return [s for s, _ in pts], [v for _, v in pts]


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def finished(run: RunResult) -> bool:
    """A run counts once it wrote its final eval row (an interrupted or still-running one does not)."""
    return any("final/greedy_acc" in r for r in run.rows)


def summarize(runs: list[RunResult]) -> dict[str, float]:
    """Seed-averaged table row: final greedy acc / pass@k, entropy (last 10 steps), clip fraction, s/step."""
    ok = [r for r in runs if finished(r)]
    if not ok:
        return {}
    pk = pass_key(ok[0].rows)
    finals = [next(x for x in r.rows if "final/greedy_acc" in x) for r in ok]
    return {
        "n_seeds": len(ok),
        "start_acc": _mean([eval_curve(r.rows, "greedy_acc")[1][0] for r in ok]),
        "final_acc": _mean([f["final/greedy_acc"] for f in finals]),
        "final_pass": _mean([f.get(f"final/{pk}", float("nan")) for f in finals]),
        # mean over the eval points after step 0: the task saturates, so the area under the curve separates more
        "auc_acc": _mean([_mean(eval_curve(r.rows, "greedy_acc")[1][1:]) for r in ok]),
        "auc_pass": _mean([_mean(eval_curve(r.rows, pk)[1][1:]) for r in ok]),
        "entropy_last10": _mean([_mean(train_curve(r.rows, "actor/entropy")[1][-10:]) for r in ok]),
        "clipfrac": _mean([_mean(train_curve(r.rows, "pg_clipfrac")[1]) for r in ok]),
        "s_per_step": _mean([_mean(train_curve(r.rows, "timing_s/step")[1]) for r in ok]),
    }


def seed_mean_curve(runs: list[RunResult], getter) -> tuple[list[int], list[float]]:
    """Average a curve over seeds at the steps all seeds share."""
    curves = [dict(zip(*getter(r.rows))) for r in runs if finished(r)]
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [_mean([c[s] for c in curves]) for s in steps]


# --- output -------------------------------------------------------------------------------------------------


SMOOTH = 5  # trailing moving-average window (steps) for the per-step training curves; eval curves are raw
CLAIM_METHODS = ("grpo", "steer", "lp_reg", "dcpo", "thr", "thr_explore")  # the methods whose claims the doc checks
PANELS = [
    ("greedy_acc", "held-out greedy accuracy", lambda rows: eval_curve(rows, "greedy_acc"), 1),
    ("pass_at_k", "held-out pass@k", lambda rows: eval_curve(rows, pass_key(rows)), 1),
    ("entropy", f"policy entropy (nats/token, rollout batch; {SMOOTH}-step moving average)",
     lambda rows: train_curve(rows, "actor/entropy"), SMOOTH),
    ("clipfrac", f"clip fraction (pg_clipfrac; {SMOOTH}-step moving average)",
     lambda rows: train_curve(rows, "pg_clipfrac"), SMOOTH),
]


def moving_average(vals: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    return [_mean(vals[max(0, i + 1 - window):i + 1]) for i in range(len(vals))]


def plot(results: dict[str, list[RunResult]], fig_dir: Path, prefix: str = "") -> list[Path]:
    """One PNG per metric, one line per method (seed mean); GRPO drawn thick and black."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    colors = plt.get_cmap("tab20").colors
    paths = []
    for fname, title, getter, window in PANELS:
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for i, (method, runs) in enumerate(results.items()):
            steps, vals = seed_mean_curve(runs, getter)
            if not steps:
                continue
            style = ({"color": "black", "linewidth": 2.5} if method == "grpo" else
                     {"color": colors[i % len(colors)], "linewidth": 1.3, "linestyle": ("-", "--", ":")[i % 3]})
            ax.plot(steps, moving_average(vals, window), marker="o" if window == 1 else None, markersize=3,
                    label=method, **style)
        ax.set_xlabel("RL step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        path = fig_dir / f"{prefix}{fname}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores (shared; 1-min load {load:.1f} when the doc was written), "
            f"Python {platform.python_version()}, OMP_NUM_THREADS=1, no GPU")


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _num(x: float, digits: int) -> str:
    return "not logged" if math.isnan(x) else f"{x:.{digits}f}"


def table(results: dict[str, list[RunResult]], k: int) -> list[str]:
    lines = [f"| method | seeds | greedy acc step 0 | final greedy acc | final pass@{k} | greedy acc, mean of evals "
             f"after step 0 | pass@{k}, mean of evals after step 0 | entropy, mean of last 10 steps | mean clip "
             "fraction | s / step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, runs in results.items():
        s = summarize(runs)
        if not s:
            err = next((r.error for r in runs if r.error), "no finished run")
            lines.append(f"| {method} | 0 | failed: `{err.splitlines()[-1][:150] if err else ''}` | | | | | | | |")
            continue
        lines.append(f"| {method} | {s['n_seeds']} | {_pct(s['start_acc'])} | {_pct(s['final_acc'])} | "
                     f"{_pct(s['final_pass'])} | "
                     f"{_pct(s['auc_acc'])} | {_pct(s['auc_pass'])} | "
                     f"{_num(s['entropy_last10'], 3)} | {_num(s['clipfrac'], 4)} | {_num(s['s_per_step'], 2)} |")
    return lines


def write_doc(results: dict[str, list[RunResult]], args: argparse.Namespace, overrides: list[str], doc: Path,
              claims_file: Path | None) -> None:
    """Table + plots + the command; the claims section is read from `claims_file` (written by a person after
    looking at the numbers), so re-running the bench never silently rewrites a judgement."""
    fig_dir = doc.parent / "methods"
    plot(results, fig_dir)
    claim_results = {m: r for m, r in results.items() if m in CLAIM_METHODS}
    if 1 < len(claim_results) < len(results):
        plot(claim_results, fig_dir, prefix="claims_")
    cmd = ["python bench/methods.py", *(["--report-only"] if args.report_only else []), f"--out {args.out}",
           f"--steps {args.steps}",
           f"--seeds {' '.join(map(str, args.seeds))}",
           f"--eval-every {args.eval_every}", f"--eval-prompts {args.eval_prompts}", f"--pass-k {args.pass_k}",
           f"--methods {' '.join(results)}"]
    if args.extra:
        cmd.append("--extra " + " ".join(args.extra))
    shared = [o for o in overrides if not o.startswith(("model.path", "data."))]
    lines = [
        "# Methods on the tiny task: GRPO vs each method recipe",
        "",
        "Every method is its `creditrl/recipes/tiny_<method>.yaml` (each `extends: tiny_grpo`), trained from the same "
        "SFT warm start (`creditrl tiny init` + `creditrl sft tiny_grpo`), for the same steps and seeds, with the same "
        "overrides: " + ", ".join(f"`{o}`" for o in shared) + ".",
        "",
        f"Machine: {machine()}.",
        "",
        f"{'Doc written from finished runs by' if args.report_only else 'Command'}: `{' '.join(cmd)}`",
        "",
        f"Seeds asked: {', '.join(map(str, args.seeds))}; the `seeds` column says how many finished per method "
        "(numbers and curves are means over them). Held-out metrics use "
        f"{args.eval_prompts} eval prompts (greedy accuracy; pass@{args.pass_k} at temperature 1.0). Entropy is the "
        "mean per-token entropy of the policy that sampled the step's batch, before that step's update "
        "(`actor/entropy`, from the old-logprob pass); clip fraction is "
        "`pg_clipfrac` (share of tokens whose clipped term is active), averaged over all steps.",
        "",
        *table(results, args.pass_k),
        "",
        "All methods:",
        "",
        "![greedy accuracy](methods/greedy_acc.png)",
        "![pass@k](methods/pass_at_k.png)",
        "![entropy](methods/entropy.png)",
        "![clip fraction](methods/clipfrac.png)",
        "",
    ]
    if 1 < len(claim_results) < len(results):
        lines += ["GRPO and the methods whose claims are checked below:", "",
                  *(f"![{f} (claims)](methods/claims_{f}.png)" for f, *_ in PANELS), ""]
    if claims_file is not None and claims_file.exists():
        lines += [claims_file.read_text().rstrip(), ""]
    else:
        lines += ["## Paper claims", "", "Not judged for these numbers: look at them and pass the judgement with "
                  "`--claims FILE` (the bench never writes a verdict on its own).", ""]
    doc.write_text("\n".join(lines) + "\n")
    log.info("wrote %s and %s/*.png", doc, fig_dir)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=None, help="method names (tiny_<name>.yaml); default: all RL")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--pass-k", type=int, default=4, help="pass@k on held-out prompts (pass@8 is ~97%% at step 0)")
    ap.add_argument("--extra", nargs="*",
                    default=["train.mini_batch_prompts=8", "train.ppo_epochs=2", "train.lr=3.0e-5"],
                    help="overrides applied to every method (default: 4 mini-batches x 2 epochs = 8 updates per "
                         "step, so that the PPO ratio leaves 1 and clipping happens at all, and a 10x lower lr so "
                         "that the task does not saturate within the run)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/creditrl-methods-bench"))
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "methods.md")
    ap.add_argument("--claims", type=Path, default=None, help="markdown appended as the claims section")
    ap.add_argument("--rerun", action="store_true", help="re-train runs that already finished in --out")
    ap.add_argument("--report-only", action="store_true", help="only read finished runs and write the doc")
    args = ap.parse_args()

    tiny = args.out / "tiny"
    overrides = train_overrides(tiny, args)
    methods = args.methods or discover_methods()
    results: dict[str, list[RunResult]] = {}
    if not args.report_only:
        build_tiny(tiny)
    for method in methods:
        if args.report_only:
            results[method] = [RunResult(method, s, read_rows(args.out / f"{method}-seed{s}")) for s in args.seeds]
            continue
        err = validates(method, overrides)
        if err is not None:
            log.warning("skip %s: config validate failed: %s", method, err.splitlines()[-1] if err else "")
            continue
        results[method] = []
        for seed in args.seeds:
            log.info("train %s seed %d", method, seed)
            res = run_one(method, seed, args.out, overrides, args.rerun)
            if res.error:
                log.warning("%s seed %d failed: %s", method, seed, res.error.splitlines()[-1])
            results[method].append(res)
        # rewrite the doc after each method so that an interrupted bench still leaves a consistent report
        write_doc(results, args, overrides, args.doc, args.claims)
    if args.report_only:
        write_doc(results, args, overrides, args.doc, args.claims)


if __name__ == "__main__":
    main()
