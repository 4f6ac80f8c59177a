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

The countdown task (issue #16, creditrl/data/countdown.py; `--task countdown`): every method is its
`tiny_<method>.yaml` pointed at the countdown task by `creditrl.data.countdown.task_overrides`, trained from one
shared SFT warm start with checkpoints (`checkpoint.resume=auto`, so an interrupted run resumes and a finished
one is skipped), then evaluated by the bench itself from its final checkpoint on `--eval-prompts` held-out prompts
(greedy, and `--pass-k` samples at T = 1.0) with per-prompt results saved in `<run>/heldout.json`. The report
judges the pre-registered predictions of docs/methods.md (PREDICTIONS below) with percentile-bootstrap 95 %
confidence intervals over seeds and prompts, and writes the block between the `countdown-results` markers of
docs/methods.md (the predictions above it are never rewritten).

    python bench/methods.py --task countdown --out /tmp/cd_bench --seeds 0 1 2 [--methods grpo steer ...]
    python bench/methods.py --task countdown --out /tmp/cd_bench --seeds 0 1 2 --report-only
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
COUNTDOWN_START, COUNTDOWN_END = "<!-- countdown-results:start -->", "<!-- countdown-results:end -->"
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


def plot(results: dict[str, list[RunResult]], fig_dir: Path, prefix: str = "", panels=None) -> list[Path]:
    """One PNG per metric, one line per method (seed mean); GRPO drawn thick and black."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    colors = plt.get_cmap("tab20").colors
    paths = []
    for fname, title, getter, window in panels or PANELS:
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
        "# Previous task (addition): GRPO vs each method recipe",
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
    head = ""
    if doc.exists() and COUNTDOWN_END in doc.read_text():  # keep the predictions and the countdown results above
        text = doc.read_text()
        head = text[: text.index(COUNTDOWN_END) + len(COUNTDOWN_END)] + "\n\n---\n\n"
    doc.write_text(head + "\n".join(lines) + "\n")
    log.info("wrote %s and %s/*.png", doc, fig_dir)


# --- the countdown task (issue #16): resumable runs, the bench's own held-out evaluation, bootstrap CIs --------

# Same for every method (on top of each tiny_<method>.yaml and the task overrides): 16 prompts x 8 samples per
# step in 2 mini-batches (so the PPO ratio leaves 1 and clipping is active), the recipe's lr and everything else.
COUNTDOWN_EXTRA = ("train.global_batch_prompts=16", "train.mini_batch_prompts=8", "train.lr=1.0e-4")
COUNTDOWN_METHODS = ("grpo", "steer", "lp_reg", "dcpo", "thr", "thr_explore", "dapo", "high_entropy")
# Preference losses (P12): offline on data/{train,eval}_pairs.jsonl from the same warm start; their held-out numbers
# are the trainer's final pair evaluation (per seed only: no per-pair values are logged), so CIs are over seeds.
PREF_METHODS = ("dpo", "tdpo1", "tdpo2")


@dataclass(frozen=True)
class Prediction:
    """One pre-registered prediction of docs/methods.md: `metric` of `method` minus `baseline`, `direction`
    higher / lower, or noninferior (CI lower end above -margin)."""

    pid: str
    method: str
    baseline: str
    metric: str
    direction: str
    paper: str
    margin: float = 0.0


PREDICTIONS = (
    Prediction("P1", "steer", "grpo", "entropy", "higher", "2510.10150"),
    Prediction("P2", "steer", "grpo", "greedy", "higher", "2510.10150"),
    Prediction("P3", "lp_reg", "grpo", "entropy", "higher", "2510.03222"),
    Prediction("P4", "lp_reg", "grpo", "greedy", "higher", "2510.03222"),
    Prediction("P5", "dcpo", "grpo", "clipfrac", "lower", "2509.02333"),
    Prediction("P6", "dcpo", "grpo", "utilisation", "higher", "2509.02333"),
    Prediction("P6", "dcpo", "grpo", "utilisation_estimate", "higher", "2509.02333 (the pre-registered estimate)"),
    Prediction("P7", "dcpo", "grpo", "pass1", "higher", "2509.02333"),
    Prediction("P8", "thr", "grpo", "greedy", "higher", "2510.03669"),
    Prediction("P9", "thr_explore", "grpo", "passk", "higher", "2510.03669"),
    Prediction("P10", "high_entropy", "dapo", "greedy", "noninferior", "2506.01939", margin=0.02),
    Prediction("P11", "high_entropy", "dapo", "entropy", "higher", "2506.01939"),
    Prediction("P12", "tdpo1", "dpo", "kl_chosen", "lower", "2404.11999"),
    Prediction("P12", "tdpo1", "dpo", "pref_acc", "equal", "2404.11999 (the condition: at equal preference acc)"),
    Prediction("P12", "tdpo2", "dpo", "kl_chosen", "lower", "2404.11999"),
    Prediction("P12", "tdpo2", "dpo", "pref_acc", "equal", "2404.11999 (the condition: at equal preference acc)"),
)
PER_PAIR = ("kl_chosen", "pref_acc")  # preference runs: one value per held-out pair (heldout.json of the run)
# P0: GRPO against its own step 0 (the SFT warm start): the phenomena the papers target.
GRPO_PHENOMENA = (("greedy", "higher"), ("pass1", "higher"), ("entropy", "lower"), ("passk", "not higher"))
PER_PROMPT = ("greedy", "pass1", "passk", "entropy", "length")  # from heldout.json, one value per prompt
PER_STEP = ("clipfrac", "utilisation", "utilisation_estimate")  # from metrics.jsonl, one value per training step
METRIC_NAMES = {"greedy": "greedy acc", "pass1": "pass@1", "passk": "pass@k", "entropy": "held-out entropy",
                "length": "response tokens", "clipfrac": "clip fraction", "utilisation": "response utilisation",
                "utilisation_estimate": "response utilisation (pre-registered estimate)",
                "kl_chosen": "held-out KL/token to ref (chosen)", "pref_acc": "held-out preference acc"}
DIAGNOSTICS = ("reward/mean", "actor/entropy", "response/length_mean", "pg_clipfrac", "adv/zero_std_frac",
               "adv/nonzero_frac",
               "steer/weight_mean", "steer/weight_at_min_frac",
               "lp_reg/gate_open", "lp_reg/coverage", "lp_reg/filtered_frac", "dcpo/clip_lo_mean", "dcpo/clip_hi_mean",
               "adv/sas_revisited_frac", "thr/weight_mean", "thr/positive_frac", "thr/scored_frac",
               "entropy_mask/kept_frac")


def bootstrap_diff(a, b, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean(a) - mean(b), 95 % CI low, high). `a` [seeds_a, P] and `b` [seeds_b, P] hold one value per (seed,
    unit); units (prompts, or steps) are paired between the arms. Each resample draws each arm's seeds with
    replacement (independently), then units with replacement (one draw for both arms)."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    n_units = a.shape[1]
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        ma = a[rng.integers(0, a.shape[0], a.shape[0])].mean(0)
        mb = b[rng.integers(0, b.shape[0], b.shape[0])].mean(0)
        u = rng.integers(0, n_units, n_units)
        diffs[i] = ma[u].mean() - mb[u].mean()
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def verdict(lo: float, hi: float, direction: str, margin: float = 0.0) -> str:
    """shown / not shown / opposite for a CI [lo, hi] of (method - baseline), by the rule of docs/methods.md."""
    if direction == "higher":
        return "shown" if lo > 0 else "opposite" if hi < 0 else "not shown"
    if direction == "lower":
        return "shown" if hi < 0 else "opposite" if lo > 0 else "not shown"
    if direction == "noninferior":
        return "shown" if lo > -margin else "opposite" if hi < 0 else "not shown"
    if direction == "not higher":  # flat or down: shown unless the CI says it went up
        return "opposite" if lo > 0 else "shown"
    if direction == "equal":  # a condition of another prediction (P12's "at equal preference accuracy")
        return "holds" if lo <= 0 <= hi else "does not hold"
    raise ValueError(direction)


def countdown_train_overrides(task: Path, args: argparse.Namespace) -> list[str]:
    from creditrl.data.countdown import task_overrides

    return [*task_overrides(task), f"train.steps={args.steps}", f"eval.every_steps={args.eval_every}",
            f"eval.max_prompts={args.eval_prompts}", f"eval.pass_k={args.pass_k}", "logging.progress=false",
            f"checkpoint.every_steps={max(args.eval_every, 1)}", "checkpoint.keep=1", "checkpoint.resume=auto",
            *args.extra]


def countdown_pref_overrides(task: Path, args: argparse.Namespace) -> list[str]:
    """DPO / TDPO on the task's pairs: the task overrides, its own step count, the same eval and checkpoints."""
    from creditrl.data.countdown import task_overrides

    return [*task_overrides(task), f"preference.train_files=[{task}/data/train_pairs.jsonl]",
            f"preference.eval_files=[{task}/data/eval_pairs.jsonl]", f"train.steps={args.pref_steps}",
            f"eval.max_prompts={args.eval_prompts}", "eval.pass_k=0", "logging.progress=false",
            "checkpoint.keep=1", "checkpoint.resume=auto"]


def build_countdown(task: Path, args: argparse.Namespace) -> None:
    """The task files, the tiny base model and the SFT warm start, once (each part skipped if present)."""
    from creditrl.data.countdown import sft_overrides

    if not (task / "data" / "eval.jsonl").exists():
        subprocess.run([sys.executable, "-m", "creditrl.data.countdown", "--out", str(task), *args.task_args],
                       check=True, env=_env(), cwd=REPO)
    if not (task / "base").exists():
        from creditrl.models.tiny import build_tiny_model

        build_tiny_model(task / "base", seed=0)
    if not (task / "sft" / "config.json").exists():
        subprocess.run(CLI + ["sft", "tiny_grpo", *sft_overrides(task), f"sft.steps={args.sft_steps}",
                              "logging.progress=false"], check=True, env=_env(), cwd=REPO)


def heldout_eval(model_source: Path, task: Path, n_prompts: int, k: int, seed: int = 12345,
                 max_new_tokens: int = 40) -> dict:
    """Per-prompt held-out results of a model (a directory with config.json) or a run (its latest checkpoint):
    greedy correctness, correct count of `k` samples at T = 1.0, mean -log pi per sampled token (an unbiased
    estimate of the policy's per-token entropy on its own samples) and mean response length."""
    import torch

    from creditrl.config import load_config
    from creditrl.data import load_prompt_datasets
    from creditrl.data.countdown import task_overrides
    from creditrl.models.build import load_causal_lm, load_tokenizer
    from creditrl.rewards import RewardManager
    from creditrl.rollout.hf_engine import HFGenerateEngine
    from creditrl.trainer.export import load_checkpoint

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # the bench machine is shared
    if (model_source / "config.json").exists():
        model_dir = model_source
        model = load_causal_lm(str(model_dir), "float32").eval()
    else:
        ckpt, _, model = load_checkpoint(model_source)
        model_dir = ckpt / "model"
    tokenizer = load_tokenizer(str(model_dir))
    cfg = load_config("tiny_grpo", task_overrides(task))
    _, eval_data = load_prompt_datasets(cfg.data, tokenizer, 0)
    rows = eval_data.rows[:n_prompts]
    engine = HFGenerateEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id, 100, tokenizer=tokenizer)
    rewards = RewardManager.from_config(cfg.reward)
    prompts = [list(r.prompt_ids) for r in rows]
    out: dict[str, list] = {"prompt": [r.prompt for r in rows]}
    try:
        _heldout_generate(engine, rewards, tokenizer, rows, prompts, out, k, seed, max_new_tokens)
    finally:
        rewards.close()
    out["k"] = k
    return out


def _heldout_generate(engine, rewards, tokenizer, rows, prompts, out, k, seed, max_new_tokens) -> None:
    import torch

    from creditrl.rollout.base import SamplingParams
    from creditrl.trainer.evaluate import reward_samples

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, params in (("greedy", SamplingParams(1, 0.0, 1.0, max_new_tokens)),
                             ("sampled", SamplingParams(k, 1.0, 1.0, max_new_tokens, seed=seed))):
            gen = engine.generate(prompts, params)
            samples = reward_samples(gen, rows, tokenizer, lambda j: f"heldout/{j}")
            scores = rewards.score(samples).components[rewards.rewards[0].name]
            correct = [0] * len(rows)
            nll, ntok = [0.0] * len(rows), [0] * len(rows)
            for j, sc in enumerate(scores):
                i = gen.prompt_index[j]
                correct[i] += int(sc >= 1.0 - 1e-9)
                nll[i] -= sum(gen.logprobs[j])
                ntok[i] += len(gen.response_ids[j])
            if name == "greedy":
                out["greedy"] = correct
            else:
                out["correct_of_k"] = correct
                out["entropy"] = [x / max(n, 1) for x, n in zip(nll, ntok)]
                out["length"] = [n / k for n in ntok]


def heldout_pairs_eval(run_dir: Path, task: Path) -> dict:
    """Per-pair held-out results of a preference run's final policy pi against the warm start pi_ref, on
    `data/eval_pairs.jsonl`, in float64 from plain full-vocabulary logits (independent of the trainer's fused
    kernel): for each pair, the mean over the chosen response's tokens t (EOS included) of

        KL_t(pi_ref || pi) = sum_v pi_ref(v | x, y_<t) (log pi_ref(v | .) - log pi(v | .)),

    the same for the rejected response, the token counts (so that sum KL / sum tokens reproduces the trainer's
    `final/kl_per_token_*`), and pref_acc = [log pi(y_w | x) > log pi(y_l | x)]."""
    import torch

    from creditrl.config import load_config
    from creditrl.models.build import load_causal_lm, load_tokenizer
    from creditrl.trainer.export import load_checkpoint
    from creditrl.trainer.preference import load_pair_files

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ckpt, _, policy = load_checkpoint(run_dir)
    ref = load_causal_lm(str(task / "sft"), "float32").eval()
    policy, ref = policy.double(), ref.double()
    tokenizer = load_tokenizer(str(ckpt / "model"))
    cfg = load_config("tiny_dpo", countdown_pref_overrides(task, argparse.Namespace(pref_steps=1, eval_prompts=1)))
    pairs = load_pair_files(cfg, list(cfg.preference.eval_files), tokenizer)

    def side(prompt_ids, response_ids) -> tuple[float, float]:  # (sum_t KL_t, log pi(y | x))
        ids = torch.tensor([list(prompt_ids) + list(response_ids)])  # [1, P + R]
        p, r = len(prompt_ids), len(response_ids)
        lp = torch.log_softmax(policy(ids).logits[0, p - 1: p + r - 1], -1)  # [R, V]
        lq = torch.log_softmax(ref(ids).logits[0, p - 1: p + r - 1], -1)  # [R, V]
        kl = (lq.exp() * (lq - lp)).sum(-1)  # [R]
        return float(kl.sum()), float(lp.gather(-1, ids[0, p:, None]).sum())

    out: dict[str, list] = {k: [] for k in ("pair", "kl_chosen", "kl_rejected", "kl_sum_chosen", "tokens_chosen",
                                            "kl_sum_rejected", "tokens_rejected", "pref_acc")}
    with torch.no_grad():
        for pair in pairs:
            kl_w, lp_w = side(pair.prompt_ids, pair.chosen_ids)
            kl_l, lp_l = side(pair.prompt_ids, pair.rejected_ids)
            n_w, n_l = len(pair.chosen_ids), len(pair.rejected_ids)
            out["pair"].append(pair.key)
            out["kl_chosen"].append(kl_w / n_w)
            out["kl_rejected"].append(kl_l / n_l)
            out["kl_sum_chosen"].append(kl_w)
            out["tokens_chosen"].append(n_w)
            out["kl_sum_rejected"].append(kl_l)
            out["tokens_rejected"].append(n_l)
            out["pref_acc"].append(float(lp_w > lp_l))
    return out


def per_prompt(held: dict, metric: str) -> list[float]:
    from creditrl.trainer.evaluate import pass_at_k

    k = held["k"]
    if metric == "greedy":
        return [float(x) for x in held["greedy"]]
    if metric == "pass1":
        return [c / k for c in held["correct_of_k"]]
    if metric == "passk":
        return [pass_at_k(k, c, k) for c in held["correct_of_k"]]
    return [float(x) for x in held[metric]]


def per_step(rows: list[dict], metric: str) -> list[float]:
    """One value per training step: pg_clipfrac, or response utilisation, the share of responses with a non-zero
    advantage: measured (`adv/nonzero_frac`) where the run logged it, else the pre-registered estimate
    1 - zero_std_frac x (1 - sas_revisited_frac) (exact for GRPO with 0/1 rewards; for DCPO an upper bound, since
    it counts every revisited all-equal group as used)."""
    steps = [r for r in rows if "final/greedy_acc" not in r and "actor/pg_loss" in r]
    if metric == "clipfrac":
        return [float(r.get("pg_clipfrac", float("nan"))) for r in steps]
    if metric == "utilisation_estimate" or any("adv/nonzero_frac" not in r for r in steps):
        return [1.0 - float(r.get("adv/zero_std_frac", float("nan"))) * (1.0 - float(r.get("adv/sas_revisited_frac",
                                                                                              0.0))) for r in steps]
    return [float(r["adv/nonzero_frac"]) for r in steps]


@dataclass
class CountdownRun(RunResult):
    """A countdown run: the trainer's rows plus the bench's own held-out evaluation (`heldout.json`)."""

    held: dict | None = None


def run_countdown(method: str, seed: int, out: Path, task: Path, overrides: list[str], args) -> CountdownRun:
    """Train (resuming from the run's latest checkpoint if interrupted; skipped when finished), then the held-out
    evaluation (skipped when heldout.json exists)."""
    run_dir = out / f"{method}-seed{seed}"
    held_path = run_dir / "heldout.json"
    res = CountdownRun(method, seed, read_rows(run_dir))
    t0 = time.perf_counter()
    if not any("final/greedy_acc" in r for r in res.rows):
        proc = subprocess.run(CLI + ["train", f"tiny_{method}", *overrides, f"output_dir={run_dir}", f"seed={seed}"],
                              capture_output=True, text=True, env=_env(), cwd=REPO)
        if proc.returncode != 0:
            res.error = (proc.stderr or proc.stdout).strip()[-600:]
            return res
        res.rows = read_rows(run_dir)
    if not held_path.exists():
        held = (heldout_pairs_eval(run_dir, task) if method in PREF_METHODS
                else heldout_eval(run_dir, task, args.final_prompts, args.pass_k))
        held_path.write_text(json.dumps(held))
    res.held = json.loads(held_path.read_text())
    res.wall_s = time.perf_counter() - t0
    return res


def load_countdown_runs(out: Path, methods: list[str], seeds: list[int]) -> dict[str, list[CountdownRun]]:
    runs: dict[str, list[CountdownRun]] = {}
    for m in methods:
        runs[m] = []
        for s in seeds:
            d = out / f"{m}-seed{s}"
            rows = read_rows(d)
            held = json.loads((d / "heldout.json").read_text()) if (d / "heldout.json").exists() else None
            runs[m].append(CountdownRun(m, s, rows, held=held))
    return runs


def _arm(runs: list[CountdownRun], metric: str):
    """[seeds, units] of a metric over the finished runs of one method (None if none finished)."""
    if metric in PER_PAIR:
        vals = [[float(x) for x in r.held[metric]] for r in runs if r.held is not None]
        return vals or None
    if metric in PER_STEP:
        vals = [per_step(r.rows, metric) for r in runs if r.held is not None]
        n = min((len(v) for v in vals), default=0)
        return [v[:n] for v in vals] if vals and n else None
    vals = [per_prompt(r.held, metric) for r in runs if r.held is not None]
    return vals or None


def judge(runs: dict[str, list[CountdownRun]], sft_held: dict | None, n_boot: int) -> list[dict]:
    """Every prediction (and P0, GRPO vs its step 0) with its estimate, CI and verdict; missing arms say so."""
    out = []
    grpo = runs.get("grpo", [])
    for metric, direction in GRPO_PHENOMENA:
        a = _arm(grpo, metric)
        if a is None or sft_held is None:
            out.append({"pid": "P0", "method": "grpo", "baseline": "step 0", "metric": metric,
                        "direction": direction, "verdict": "not run"})
            continue
        est, lo, hi = bootstrap_diff(a, [per_prompt(sft_held, metric)], n_boot)
        out.append({"pid": "P0", "method": "grpo", "baseline": "step 0 (SFT)", "metric": metric,
                    "direction": direction, "est": est, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, direction)})
    for p in PREDICTIONS:
        a, b = _arm(runs.get(p.method, []), p.metric), _arm(runs.get(p.baseline, []), p.metric)
        row = {"pid": p.pid, "method": p.method, "baseline": p.baseline, "metric": p.metric,
               "direction": p.direction + (f" (margin {p.margin:g})" if p.margin else ""), "paper": p.paper}
        if a is None or b is None:
            out.append({**row, "verdict": "not run"})
            continue
        if p.metric in PER_STEP:
            n = min(len(a[0]), len(b[0]))
            a, b = [v[:n] for v in a], [v[:n] for v in b]
        est, lo, hi = bootstrap_diff(a, b, n_boot)
        out.append({**row, "est": est, "lo": lo, "hi": hi, "n_a": len(a), "n_b": len(b),
                    "verdict": verdict(lo, hi, p.direction, p.margin)})
    return out


def _fmt(metric: str, x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{100 * x:+.1f} pts" if metric in ("greedy", "pass1", "passk", "utilisation", "utilisation_estimate",
                                                   "pref_acc") else f"{x:+.4f}"


def countdown_summary(runs: dict[str, list[CountdownRun]], sft_held: dict | None, k: int) -> list[str]:
    names = ["greedy", "pass1", "passk", "entropy", "length"]
    lines = [f"| method | seeds | greedy acc | pass@1 | pass@{k} | held-out entropy (nats/token) | response tokens | "
             "mean clip fraction | response utilisation | s / step |", "|---|---|---|---|---|---|---|---|---|---|"]
    if sft_held is not None:
        v = [_mean(per_prompt(sft_held, n)) for n in names]
        lines.append(f"| SFT warm start (step 0) | - | {_pct(v[0])} | {_pct(v[1])} | {_pct(v[2])} | {v[3]:.3f} | "
                     f"{v[4]:.1f} | | | |")
    pref = []
    for m, rs in runs.items():
        ok = [r for r in rs if r.held is not None]
        if m in PREF_METHODS:
            pref.append((m, ok))
            continue
        if not ok:
            err = next((r.error for r in rs if r.error), None)
            lines.append(f"| {m} | 0 | {'failed: `' + err.splitlines()[-1][:120] + '`' if err else 'not run'} "
                         "| | | | | | | |")
            continue
        v = [_mean([_mean(per_prompt(r.held, n)) for r in ok]) for n in names]
        cf = _mean([_mean(per_step(r.rows, "clipfrac")) for r in ok])
        ut = _mean([_mean(per_step(r.rows, "utilisation")) for r in ok])
        sps = _mean([_mean(train_curve(r.rows, "timing_s/step")[1]) for r in ok])
        lines.append(f"| {m} | {len(ok)} | {_pct(v[0])} | {_pct(v[1])} | {_pct(v[2])} | {v[3]:.3f} | {v[4]:.1f} | "
                     f"{_num(cf, 4)} | {_pct(ut)} | {_num(sps, 2)} |")
    if pref:
        lines += ["", "| preference loss (P12) | seeds | held-out pref acc | KL/token chosen (mean over pairs) | "
                  "KL/token chosen (sum / tokens; trainer's) | KL/token rejected | greedy acc (trainer's eval "
                  "prompts) |", "|---|---|---|---|---|---|---|"]
        for m, ok in pref:
            finals = [next((x for x in r.rows if "final/pref_acc" in x), {}) for r in ok]
            trainer = lambda key: _mean([f.get(key, float("nan")) for f in finals])  # noqa: E731
            held = lambda key: _mean([_mean(r.held[key]) for r in ok])  # noqa: E731
            pooled = _mean([sum(r.held["kl_sum_chosen"]) / sum(r.held["tokens_chosen"]) for r in ok])
            lines.append(f"| {m} | {len(ok)} | {_pct(held('pref_acc'))} | {_num(held('kl_chosen'), 4)} | "
                         f"{_num(pooled, 4)} ({_num(trainer('final/kl_per_token_chosen'), 4)}) | "
                         f"{_num(held('kl_rejected'), 4)} | {_pct(trainer('final/greedy_acc'))} |")
    return lines


def diagnostics_table(runs: dict[str, list[CountdownRun]]) -> list[str]:
    """Per-part metrics each method logs, mean over all steps and seeds (only the keys a method logged)."""
    lines = ["| method | diagnostics (mean over steps and seeds) |", "|---|---|"]
    for m, rs in runs.items():
        if m in PREF_METHODS:
            continue
        ok = [r for r in rs if r.held is not None]
        parts = []
        for key in DIAGNOSTICS:
            per_seed = [_mean(train_curve(r.rows, key)[1]) for r in ok]
            logged = sum(not math.isnan(x) for x in per_seed)
            if logged:  # a metric added after some runs were made says over how many seeds it is
                parts.append(f"`{key}` {_mean(per_seed):.4g}" + (f" ({logged} of {len(ok)} seeds)"
                                                                 if logged < len(ok) else ""))
        lines.append(f"| {m} | {', '.join(parts) if parts else 'no finished run'} |")
    return lines


def countdown_block(runs, sft_held, judged, args, overrides) -> str:
    cmd = (f"python bench/methods.py --task countdown --out {args.out} --steps {args.steps} --seeds "
           f"{' '.join(map(str, args.seeds))} --eval-every {args.eval_every} --eval-prompts {args.eval_prompts} "
           f"--pass-k {args.pass_k} --final-prompts {args.final_prompts} --sft-steps {args.sft_steps} "
           f"--pref-steps {args.pref_steps} "
           f"--methods {' '.join(runs)}" + (f" --task-args {' '.join(args.task_args)}" if args.task_args else "")
           + f" --extra {' '.join(args.extra)}")
    shared = [o for o in overrides if not o.startswith(("model.path", "data."))]
    lines = [
        COUNTDOWN_START, "## Results on the countdown task", "",
        "Every method is its `creditrl/recipes/tiny_<method>.yaml` with the same task and budget overrides: "
        + ", ".join(f"`{o}`" for o in shared) + f"; all from one SFT warm start ({args.sft_steps} steps on "
        "`data/sft.jsonl`).", "",
        f"Machine: {machine()}.", "",
        f"Command (resumable: finished runs are skipped, interrupted ones resume from their checkpoint; add "
        f"`--report-only` to rebuild this block): `{cmd}`", "",
        f"Held-out: the first {args.final_prompts} prompts of `data/eval.jsonl`, evaluated by the bench from each "
        f"run's final checkpoint: greedy accuracy, pass@1 and pass@{args.pass_k} from {args.pass_k} samples at "
        "T = 1.0, held-out entropy = mean -log pi per sampled token (unbiased estimate of the per-token entropy on "
        "the policy's own samples). Numbers are means over seeds. The curves below are the trainer's periodic "
        f"evaluations on the first {args.eval_prompts} held-out prompts (seed means; entropy and clip fraction per "
        "training step).", "",
        *countdown_summary(runs, sft_held, args.pass_k), "",
        "### Predictions, judged", "",
        f"Difference = method - baseline; 95 % percentile bootstrap CI ({args.boot} resamples over seeds, then "
        "prompts, or steps for per-step metrics). Verdict by the rule fixed in the predictions section.", "",
        "| # | method | baseline | metric | predicted | difference | 95 % CI | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for j in judged:
        if j["verdict"] == "not run":
            lines.append(f"| {j['pid']} | {j['method']} | {j['baseline']} | {METRIC_NAMES[j['metric']]} | "
                         f"{j['direction']} | | | not run |")
            continue
        lines.append(f"| {j['pid']} | {j['method']} | {j['baseline']} | {METRIC_NAMES[j['metric']]} | "
                     f"{j['direction']} | {_fmt(j['metric'], j['est'])} | [{_fmt(j['metric'], j['lo'])}, "
                     f"{_fmt(j['metric'], j['hi'])}] | **{j['verdict']}** |")
    lines += ["", "### Diagnostics each method logs", "", *diagnostics_table(runs), "",
              "![greedy accuracy](methods/countdown_greedy_acc.png)",
              "![pass@1](methods/countdown_pass_at_1.png)",
              "![pass@k](methods/countdown_pass_at_k.png)",
              "![entropy](methods/countdown_entropy.png)",
              "![clip fraction](methods/countdown_clipfrac.png)", ""]
    if args.claims is not None and args.claims.exists():
        lines += [args.claims.read_text().rstrip(), ""]
    lines.append(COUNTDOWN_END)
    return "\n".join(lines)


def write_countdown_doc(doc: Path, block: str) -> None:
    """Replace the block between the countdown markers (the rest of the doc, predictions included, is kept)."""
    text = doc.read_text() if doc.exists() else f"{COUNTDOWN_START}\n{COUNTDOWN_END}\n"
    if COUNTDOWN_START not in text or COUNTDOWN_END not in text:
        text = f"{COUNTDOWN_START}\n{COUNTDOWN_END}\n\n" + text
    a, b = text.index(COUNTDOWN_START), text.index(COUNTDOWN_END) + len(COUNTDOWN_END)
    doc.write_text(text[:a] + block + text[b:])


def report_countdown(args, methods: list[str], task: Path, overrides: list[str]) -> list[dict]:
    runs = load_countdown_runs(args.out, methods, args.seeds)
    sft_path = args.out / "sft-heldout.json"
    sft_held = json.loads(sft_path.read_text()) if sft_path.exists() else None
    judged = judge(runs, sft_held, args.boot)
    (args.out / "judged.json").write_text(json.dumps(judged, indent=1))
    as_rows = {m: [RunResult(m, r.seed, r.rows) for r in rs if r.held is not None] for m, rs in runs.items()
               if m not in PREF_METHODS}
    plot({m: r for m, r in as_rows.items() if r}, args.doc.parent / "methods", prefix="countdown_",
         panels=[*PANELS, ("pass_at_1", "held-out pass@1 (mean sample accuracy at T = 1, eval prompts)",
                           lambda rows: eval_curve(rows, "sample_acc"), 1)])
    write_countdown_doc(args.doc, countdown_block(runs, sft_held, judged, args, overrides))
    log.info("wrote %s (countdown block) and %s/countdown_*.png", args.doc, args.doc.parent / "methods")
    return judged


def main_countdown(args: argparse.Namespace) -> None:
    task = args.out / "countdown"
    methods = args.methods or list(COUNTDOWN_METHODS)
    overrides = countdown_train_overrides(task, args)
    if not args.report_only:
        build_countdown(task, args)
        sft_path = args.out / "sft-heldout.json"
        if not sft_path.exists():
            sft_path.write_text(json.dumps(heldout_eval(task / "sft", task, args.final_prompts, args.pass_k)))
        pref = countdown_pref_overrides(task, args)
        for method in methods:
            err = validates(method, pref if method in PREF_METHODS else overrides)
            if err is not None:
                log.warning("skip %s: config validate failed: %s", method, err.splitlines()[-1] if err else "")
                continue
            for seed in args.seeds:
                log.info("countdown: %s seed %d", method, seed)
                res = run_countdown(method, seed, args.out, task, pref if method in PREF_METHODS else overrides, args)
                if res.error:
                    log.warning("%s seed %d failed: %s", method, seed, res.error.splitlines()[-1])
            report_countdown(args, methods, task, overrides)  # after each method: an interrupted bench still reports
    report_countdown(args, methods, task, overrides)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=None, help="method names (tiny_<name>.yaml); default: all RL")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--pass-k", type=int, default=4, help="pass@k on held-out prompts (pass@8 is ~97%% at step 0)")
    ap.add_argument("--extra", nargs="*", default=None,
                    help="overrides applied to every method (default: 4 mini-batches x 2 epochs = 8 updates per "
                         "step, so that the PPO ratio leaves 1 and clipping happens at all, and a 10x lower lr so "
                         "that the task does not saturate within the run); countdown: COUNTDOWN_EXTRA")
    ap.add_argument("--out", type=Path, default=Path("/tmp/creditrl-methods-bench"))
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "methods.md")
    ap.add_argument("--claims", type=Path, default=None, help="markdown appended as the claims section")
    ap.add_argument("--rerun", action="store_true", help="re-train runs that already finished in --out")
    ap.add_argument("--report-only", action="store_true", help="only read finished runs and write the doc")
    ap.add_argument("--task", choices=["addition", "countdown"], default="addition",
                    help="addition: the tiny task (creditrl tiny init); countdown: issue #16's task (see docstring)")
    ap.add_argument("--task-args", nargs="*", default=[],
                    help="countdown: options of `python -m creditrl.data.countdown`, e.g. --n-numbers 3")
    ap.add_argument("--sft-steps", type=int, default=1000, help="countdown: SFT warm-start steps")
    ap.add_argument("--final-prompts", type=int, default=1000,
                    help="countdown: held-out prompts of the bench's own final evaluation (per-prompt results)")
    ap.add_argument("--boot", type=int, default=2000, help="countdown: bootstrap resamples")
    ap.add_argument("--pref-steps", type=int, default=100, help="countdown: steps of the DPO / TDPO runs (P12)")
    args = ap.parse_args()
    if args.task == "countdown":
        if args.extra is None:
            args.extra = list(COUNTDOWN_EXTRA)
        main_countdown(args)
        return
    if args.extra is None:
        args.extra = ["train.mini_batch_prompts=8", "train.ppo_epochs=2", "train.lr=3.0e-5"]

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
