"""Checkpoints as models: find a run's checkpoint, load its policy (full weights or a LoRA adapter on its base),
and export it as a plain Hugging Face model directory (`creditrl export`).

A LoRA checkpoint holds only the adapter; its base model is the directory recorded in the adapter's
`adapter_config.json` (`base_model_name_or_path`, an absolute path: `models.build.load_causal_lm` loads from the
resolved path), or else the checkpoint's `model.path`, so `creditrl eval` / `export` work from any directory.

    creditrl export runs/tiny-grpo --out exported/     # the latest checkpoint, LoRA merged
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('exported')"
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from creditrl.config import load_config
from creditrl.models.build import ModelLoadError, load_causal_lm, load_tokenizer
from creditrl.trainer.checkpoint import latest_checkpoint

log = logging.getLogger(__name__)


def resolve_checkpoint(target: str | Path) -> Path:
    """A checkpoint directory (has trainer_state.pt), or the latest checkpoint of a run directory."""
    p = Path(target)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} is not a directory. Fix: pass a checkpoint (.../checkpoints/step_N) or a run "
                                f"directory")
    ckpt = p if (p / "trainer_state.pt").is_file() else latest_checkpoint(p)
    if ckpt is None:
        raise FileNotFoundError(f"{p} is neither a checkpoint (no trainer_state.pt) nor a run directory with "
                                f"checkpoints/latest. Fix: pass .../checkpoints/step_N or the run directory")
    return ckpt


def adapter_base_path(adapter_dir: Path, recipe_model_path: str) -> Path:
    """The base model of a LoRA adapter: the recorded absolute path if it exists, else the recipe's model.path."""
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    for candidate in (recorded, recipe_model_path):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise ModelLoadError(f"the LoRA adapter in {adapter_dir} needs its base model, but neither the recorded "
                         f"'{recorded}' nor model.path '{recipe_model_path}' is a directory from here "
                         f"({Path.cwd()}). Fix: run from the directory the run was started in, or pass "
                         f"model.path=/absolute/path/to/base")


def load_checkpoint(target: str | Path, overrides: list[str] | None = None):
    """(checkpoint dir, its config, its policy in eval mode: a PeftModel for LoRA runs, else the full model)."""
    ckpt = resolve_checkpoint(target)
    cfg = load_config(ckpt / "config.yaml", list(overrides or []))
    model_dir = ckpt / "model"
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_causal_lm(str(adapter_base_path(model_dir, cfg.model.path)), cfg.model.dtype)
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = load_causal_lm(str(model_dir), cfg.model.dtype)
    return ckpt, cfg, model.eval()


def export_checkpoint(target: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write `out`: the checkpoint's policy as a plain model (LoRA merged into the base) + its tokenizer.

    Written to a temporary sibling directory and renamed at the end, so a failure leaves no half-written model;
    an existing non-empty `out` is kept unless `force`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty. Fix: choose another --out, or pass --force to "
                              f"replace it")
    ckpt, cfg, model = load_checkpoint(target)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    load_tokenizer(str(ckpt / "model")).save_pretrained(str(tmp))
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    tmp.rename(out)
    log.info("exported %s to %s", ckpt, out)
    return out


