"""The `creditrl` command line. Every command has --help; user mistakes print one paragraph, no traceback."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL fine-tuning of LLMs with token-level "
                  "credit assignment.")
config_app = typer.Typer(no_args_is_help=True, help="Show or validate a recipe's resolved configuration.")
tiny_app = typer.Typer(no_args_is_help=True, help="The tiny local model and synthetic task (no downloads).")
app.add_typer(config_app, name="config")
app.add_typer(tiny_app, name="tiny")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
OVERRIDES_HELP = "Config overrides, e.g. train.steps=50 algorithm.policy_loss.clip_high=0.28"


def _quiet_libraries(level: str = "INFO") -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err_console,
                        show_path=False, rich_tracebacks=False)], force=True)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def _user_errors():
    from creditrl.config import ConfigError
    from creditrl.data import DataError
    from creditrl.learner.health import TrainingStopped
    from creditrl.models.build import ModelLoadError
    from creditrl.rewards.base import RewardConfigError

    return (ConfigError, DataError, ModelLoadError, RewardConfigError, TrainingStopped, FileNotFoundError,
            FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _error(message: str) -> None:
    """One paragraph on stderr; the message is printed as text (no rich markup), so `[1.5, 0.9]` survives."""
    err_console.print("error:", style="bold red", end=" ")
    err_console.print(message, markup=False)


def _run(fn, *args):
    """Run a command; user errors become a one-paragraph message and exit code 2."""
    try:
        return fn(*args)
    except _user_errors() as e:
        _error(str(e))
        raise typer.Exit(2) from None


def _load(recipe: str, overrides: list[str], check: str | None = None):
    """The resolved config; with `check` (train | sft | eval), also every file it names (creditrl/preflight.py)
    before any heavy work."""
    from creditrl.config import load_config

    origins: dict[str, str] = {}
    cfg = load_config(recipe, overrides, origins)
    if check is not None:
        from creditrl.preflight import check_recipe

        check_recipe(cfg, origins, check)
    return cfg


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe YAML (a path, or the name of a built-in recipe)"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="Resume from the latest checkpoint of the run "
                                "(same as checkpoint.resume=auto)"),
):
    """Run a recipe: RL (generate, reward, update) or, with a `preference:` section, DPO / TDPO / cDPO;
    evaluate, checkpoint. Same loop on `resources.backend` local and ray."""

    def go():
        _quiet_libraries()
        cfg = _load(recipe, list(overrides or []) + (["checkpoint.resume=auto"] if resume else []), check="train")
        logging.getLogger().setLevel(cfg.logging.level)
        from creditrl.trainer.loop import train as run_train

        result = run_train(cfg)
        before, after = result.eval_before.get("eval/greedy_acc"), result.eval_after.get("eval/greedy_acc")
        if before is not None and after is not None:
            Console(highlight=False).print(f"greedy accuracy: {100 * before:.1f}% -> {100 * after:.1f}% "
                                           f"({100 * (after - before):+.1f} points); run dir {result.run_dir}")

    _run(go)


@app.command()
def sft(
    recipe: str = typer.Argument(..., help="Recipe YAML whose data and sft sections are used"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
):
    """Supervised warm start: fine-tune sft.init_path on the recipe's data, save to sft.output_path."""

    def go():
        _quiet_libraries()
        from creditrl.trainer.sft import run_sft

        run_sft(_load(recipe, list(overrides or []), check="sft"))

    _run(go)


@app.command(name="eval")
def eval_cmd(
    target: str = typer.Argument(..., help="A checkpoint directory (.../checkpoints/step_N), a run directory, "
                                 "or a recipe YAML (evaluates its model.path)"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
):
    """Evaluate greedy accuracy and pass@k on the held-out split."""

    def go():
        _quiet_libraries()
        from creditrl.trainer.evaluate_cli import evaluate_target

        if not Path(target).is_dir():  # a recipe: check it and what it names first (a run dir holds a checked one)
            _load(target, list(overrides or []), check="eval")
        metrics = evaluate_target(target, list(overrides or []))
        console = Console(highlight=False)
        for k, v in metrics.items():
            console.print(f"{k}: {v:.4f}")

    _run(go)


@config_app.command("show")
def config_show(
    recipe: str = typer.Argument(..., help="Recipe YAML"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
):
    """Print the resolved configuration (defaults + recipe + overrides) as YAML."""

    def go():
        from creditrl.config import dump_yaml

        sys.stdout.write(dump_yaml(_load(recipe, list(overrides or []))))

    _run(go)


@config_app.command("validate")
def config_validate(
    recipe: str = typer.Argument(..., help="Recipe YAML"),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    schema_only: bool = typer.Option(False, "--schema-only", help="Check keys, types and values only, not the "
                                     "model, tokenizer, data and reward files the recipe names"),
    command: str = typer.Option("train", "--for", help="Which command's files to check: train, sft or eval"),
):
    """Check a recipe without running it: keys, types, ranges, divisibility, templates, and (unless
    --schema-only) the model and tokenizer directories, data files and their fields, reward files."""

    def go():
        if command not in ("train", "sft", "eval"):
            from creditrl.config import ConfigError

            raise ConfigError(f"--for {command!r}: expected train, sft or eval")
        if not schema_only:
            _quiet_libraries("WARNING")
        _load(recipe, list(overrides or []), check=None if schema_only else command)
        Console(highlight=False).print(f"{recipe}: OK", markup=False)

    _run(go)


LIST_TARGETS_HELP = "What to list: parts (algorithm parts), rewards, recipes, keys (every recipe key) or all"


@app.command()
def export(
    target: str = typer.Argument(..., help="A checkpoint directory (.../checkpoints/step_N) or a run directory "
                                 "(its latest checkpoint)"),
    out: Path = typer.Option(..., "--out", help="Directory for the exported model and tokenizer"),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists and is not empty"),
):
    """Write a checkpoint's policy as a plain Hugging Face model (LoRA merged into its base) + tokenizer."""

    def go():
        _quiet_libraries()
        from creditrl.trainer.export import export_checkpoint

        path = export_checkpoint(target, out, force)
        Console(highlight=False).print(f"exported {target} to {path}", markup=False)

    _run(go)


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run directory (a recipe's output_dir, with metrics.jsonl)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the PNGs (default: RUN_DIR/plots)"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated metric keys to plot, e.g. "
                                          "reward/mean,actor/entropy (default: the main metrics the run has)"),
):
    """PNG plots of a run's metrics (one per metric + overview.png), from RUN_DIR/metrics.jsonl."""
    from creditrl.trainer.plot import PlotError, plot_run

    keys = [k.strip() for k in metrics.split(",") if k.strip()] if metrics else None
    try:
        paths = plot_run(run_dir, out, keys)
    except PlotError as e:
        _error(str(e))
        raise typer.Exit(2) from None
    Console(highlight=False).print(f"wrote {len(paths)} plots to {paths[0].parent}", markup=False)


@app.command(name="list")
def list_cmd(
    target: str = typer.Argument("all", help=LIST_TARGETS_HELP),
    markdown: bool = typer.Option(False, "--markdown", help="With `keys`: print the recipe reference as Markdown "
                                  "(the text of docs/configuration.md)"),
):
    """List the registered algorithm parts and reward functions (with their options, types and defaults), the
    built-in recipes, or every recipe key (`creditrl list keys --markdown > docs/configuration.md`)."""
    from creditrl import catalog

    if target not in catalog.TARGETS:
        _error(f"unknown list target {target!r}; choose one of {', '.join(catalog.TARGETS)}")
        raise typer.Exit(2)
    if markdown:
        if target != "keys":
            _error("--markdown is for `creditrl list keys --markdown` (the recipe reference)")
            raise typer.Exit(2)
        sys.stdout.write(catalog.reference_markdown())
        return
    from rich.table import Table

    console = Console(highlight=False)

    def items_table(title: str, items, key_column: bool) -> Table:
        table = Table(title=title, title_justify="left", show_lines=True)
        if key_column:
            table.add_column("recipe key", no_wrap=True)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("summary")
        table.add_column("options (type = default)")
        for it in items:
            opts = "\n".join(f"{o.name}: {o.type} = {o.default}" for o in it.options) or "-"
            table.add_row(*([it.key] if key_column else []), it.name, it.summary, opts)
        return table

    if target in ("parts", "all"):
        console.print(items_table("Algorithm parts (algorithm.*)", catalog.list_parts(), True), markup=False)
    if target in ("rewards", "all"):
        console.print(items_table("Reward functions (reward.fns)", catalog.list_rewards(), False), markup=False)
    if target in ("recipes", "all"):
        table = Table(title="Built-in recipes (creditrl train NAME)", title_justify="left")
        for col in ("name", "extends", "summary"):
            table.add_column(col, no_wrap=col != "summary", style="bold" if col == "name" else None)
        for it in catalog.list_recipes():
            table.add_row(it.name, it.options[0].default if it.options else "-", it.summary)
        console.print(table, markup=False)
    if target in ("keys", "all"):
        table = Table(title="Recipe keys (docs/configuration.md)", title_justify="left")
        for col in ("key", "type", "default", "meaning"):
            table.add_column(col, no_wrap=col == "key", style="bold" if col == "key" else None)
        for o in catalog.recipe_keys():
            table.add_row(o.name, o.type, o.default, o.doc)
        console.print(table, markup=False)


@tiny_app.command("init")
def tiny_init(
    out: Path | None = typer.Option(None, help="Directory for base/ (model + tokenizer) and data/ "
                                               "[default: tiny, or countdown with --task countdown]"),
    seed: int = typer.Option(0, help="Seed for the weights and the synthetic data"),
    force: bool = typer.Option(False, help="Rebuild even if the directory exists"),
    task: str = typer.Option("addition", help="addition (tiny_* recipes) or countdown (countdown_grpo, "
                                              "docs/methods.md)"),
):
    """Build the tiny tokenizer + Llama-style model (random init) and a synthetic task: addition, or countdown."""
    from creditrl.data import countdown
    from creditrl.data.synthetic import write_arithmetic_task
    from creditrl.models.tiny import build_tiny_model

    if task not in ("addition", "countdown"):
        _error(f"--task {task!r} is not a tiny task. Fix: --task addition or --task countdown")
        raise typer.Exit(2)
    out = out or Path("tiny" if task == "addition" else "countdown")
    _quiet_libraries()
    console = Console(highlight=False)
    if (out / "base" / "config.json").is_file() and (out / "data" / "train.jsonl").is_file() and not force:
        console.print(f"{out} already has a tiny model and data (use --force to rebuild)")
        return
    build_tiny_model(out / "base", seed=seed)
    if task == "addition":
        write_arithmetic_task(out / "data", seed=seed)
        console.print(f"wrote {out / 'base'} (tokenizer + model) and {out / 'data'} (train.jsonl, eval.jsonl)")
        return
    countdown.write_countdown_task(out, countdown.CountdownSpec(), seed=seed)
    console.print(f"wrote {out / 'base'} (tokenizer + model) and {out / 'data'} (train, sft, eval and pair files); "
                  f"next: creditrl sft countdown_grpo, then creditrl train countdown_grpo")


@tiny_app.command("chat")
def tiny_chat(
    out: Path = typer.Option(Path("tinychat"), help="Directory for model/ (Qwen2-style chat model) and data/"),
    seed: int = typer.Option(0, help="Seed for the weights and the data"),
):
    """A stand-in for your own chat model and data: a tiny Qwen2-architecture model with a byte-level BPE
    tokenizer, a ChatML template and two end tokens, plus the apples task as verl parquet and TRL jsonl."""
    from creditrl.data.synthetic import write_chat_tasks
    from creditrl.models.tiny import build_tiny_chat_model

    _quiet_libraries()
    build_tiny_chat_model(out / "model", seed=seed)
    write_chat_tasks(out / "data", seed=seed)
    Console(highlight=False).print(f"wrote {out / 'model'} (chat model + tokenizer) and {out / 'data'} "
                                   f"(verl_train.parquet, verl_eval.parquet, trl_train.jsonl, trl_eval.jsonl)")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
