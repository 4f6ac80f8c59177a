"""Checkpoints with exact resume.

The same save and restore serve RL and preference runs on both learners (the learner writes its own part).

Layout under `<run_dir>/checkpoints/`:

    step_000020/model/              save_pretrained weights (or the LoRA adapter) + tokenizer
    step_000020/learner_state.pt    LocalLearner: optimizer, scheduler, skipped-step counter
    step_000020/deepspeed/          LearnerGroup (Ray): DeepSpeed's sharded model/optimizer/scheduler state
    step_000020/critic/             with a `critic:` section (PPO/GAE): the value model (model/) and its
                                    optimizer, scheduler and warm-up counter (critic_state.pt)
    step_000020/trainer_state.pt    step, RNG states (python, numpy, torch), data sampler, algorithm state,
                                    the evaluation before training
    step_000020/config.yaml         the resolved config
    latest                          name of the newest complete checkpoint, written last

A checkpoint is written into a temporary directory and renamed when complete, then `latest` is replaced
atomically, so a crash mid-save never leaves a `latest` that points at a partial checkpoint. The newest
`keep` checkpoints are kept.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, learner, tokenizer, trainer_state: dict, config_yaml: str,
                    keep: int, critic=None) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = root / f".tmp_{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    learner.save(tmp)
    if critic is not None:
        critic.save(tmp / "critic")
    tokenizer.save_pretrained(tmp / "model")
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    marker_tmp = root / ".latest.tmp"
    marker_tmp.write_text(name + "\n")
    os.replace(marker_tmp, root / "latest")
    _rotate(root, keep)
    log.info("saved checkpoint %s", final)
    return final


def _rotate(root: Path, keep: int) -> None:
    ckpts = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in ckpts[:-keep]:
        shutil.rmtree(old)


def latest_checkpoint(run_dir: Path) -> Path | None:
    marker = checkpoint_dir(run_dir) / "latest"
    if not marker.is_file():
        return None
    path = checkpoint_dir(run_dir) / marker.read_text().strip()
    return path if path.is_dir() else None


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """`checkpoint.resume`: never -> None; auto -> latest in run_dir (or None); else a checkpoint path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    p = Path(resume)
    if (p / "latest").is_file() or (p / "checkpoints" / "latest").is_file():
        found = latest_checkpoint(p if (p / "checkpoints").is_dir() else p.parent)
        if found is not None:
            return found
    if not (p / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"checkpoint.resume={resume}: not a checkpoint directory (no trainer_state.pt). "
                                f"Use 'auto' to resume from the latest checkpoint of the run.")
    return p


def load_trainer_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", weights_only=False)


def restore(resume_from: Path, learner, critic=None) -> dict:
    """Load a checkpoint into the learner and the RNGs; returns its trainer state: `step`, `eval_before` (the
    evaluation made before training) and what the run kind saved (data sampler, algorithm state), which the
    caller loads. The caller must then make the rollout engines use the loaded weights before generating.
    """
    learner.load(resume_from)
    if critic is not None:
        critic.load(resume_from / "critic")
    state = load_trainer_state(resume_from)
    set_rng_state(state["rng"])
    return state
