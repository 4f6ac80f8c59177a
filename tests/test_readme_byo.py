"""The README's "Your own model and data" section, run as written from a copy of the repository's examples
(issue 13): every command of its block must succeed, and the exported model must load in plain transformers."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from typer.testing import CliRunner

from creditrl.cli import app

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- byo:begin -->", 1)[1].split("<!-- byo:end -->", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines() if not line.startswith("```")]
    return [shlex.split(line) for line in lines if line]


def test_readme_block_lists_the_guide_commands():
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["creditrl", "tiny"], ["creditrl", "config"], ["creditrl", "train"],
                                         ["creditrl", "train"], ["creditrl", "export"]]
    # the recipes the README links are the files the commands run
    for name in ("trl.yaml", "verl.yaml", "rewards.py"):
        assert f"examples/byo/{name}" in (ROOT / "README.md").read_text()


def test_readme_guide_runs_from_a_fresh_copy(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in readme_commands():
        args = command[1:] + (["logging.progress=false"] if command[1] == "train" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
    for run in ("runs/byo-trl-seed0", "runs/byo-verl-seed0"):
        steps = [line for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines() if '"reward/mean"' in line]
        assert len(steps) == 2, run
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "my-policy")
    tok = AutoTokenizer.from_pretrained(tmp_path / "my-policy")
    assert model.config.model_type == "qwen2" and tok.chat_template
