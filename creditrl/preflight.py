"""Checks of everything a recipe points at, run before any heavy work (`creditrl train`, `sft`, `eval` and
`creditrl config validate` all call `check_recipe`).

The schema (creditrl/config/schema.py) checks each value on its own: ranges, signs, divisibility, templates.
This module checks the files the values name, cheaply (no model weights are loaded):

- model directories (`model.path`, `sft.init_path`, preference reference / cDPO models, reward models):
  config.json is a JSON object with a `model_type` this transformers knows (a causal LM where one is needed),
  the weight files have readable headers (safetensors header parse, shards of an index exist, .bin files are
  torch zip archives), LoRA target modules exist among the weights;
- the tokenizer loads, has an EOS token, and has a chat template when `data.template: chat`;
- data files exist, are .jsonl/.json/.parquet, decode as UTF-8, parse row by row, are not empty, every row
  has the mapped fields (no null, prompts not empty), the template's fields exist;
- custom reward files exist and import, their function's signature fits;
- `checkpoint.resume`, when a path, is a checkpoint or run directory.

Every failure is a `ConfigError`, `DataError` or `ModelLoadError` whose message names the file (and line),
the recipe key (and where it was set), the bad value and the fix; unexpected exceptions raised while reading
a user-supplied file are wrapped the same way.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Iterator

from creditrl.config import ConfigError, RecipeConfig
from creditrl.config.schema import template_fields
from creditrl.data.dataset import DataError
from creditrl.models.build import ModelLoadError, check_model_dir

Origins = dict[str, str]
MAX_ROW_ERRORS_SHOWN = 3


def _at(origins: Origins, key: str) -> str:
    """' (set at FILE:LINE)' / ' (override ...)' / ' (default)' for a recipe key or its closest parent."""
    k = key
    while k:
        if k in origins:
            return f" (set at {origins[k]})" if not origins[k].startswith("override") else f" ({origins[k]})"
        k = k.rpartition(".")[0] if "." in k else ""
        k = k.split("[")[0] if k.endswith("]") else k
    return " (default)"


# ---------------------------------------------------------------------------------------------------------
# Model and tokenizer directories
# ---------------------------------------------------------------------------------------------------------
def check_model(path: str, key: str, origins: Origins, causal_lm: bool = True,
                lora_targets: list[str] | None = None) -> None:
    """A loadable Hugging Face model directory, checked without loading weights."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    ctx = f"{key}={path}{_at(origins, key)}"
    try:
        p = check_model_dir(path)
    except ModelLoadError as e:
        raise ModelLoadError(f"{ctx}: {e}") from None
    cfg_file = p / "config.json"
    try:
        conf = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{ctx}: {cfg_file} is not UTF-8 text ({e.reason} at byte {e.start}). Fix: restore "
                             f"the file (save_pretrained writes it).") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{ctx}: {cfg_file}:{e.lineno} is not valid JSON ({e.msg}). Fix: repair or re-save "
                             f"the model config (model.config.save_pretrained).") from None
    if not isinstance(conf, dict):
        raise ModelLoadError(f"{ctx}: {cfg_file} must hold a JSON object, got {type(conf).__name__}.")
    model_type = conf.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelLoadError(f"{ctx}: {cfg_file} has no \"model_type\" (got {model_type!r}). Fix: add the "
                             f"architecture's model_type, e.g. \"llama\" or \"qwen2\".")
    if model_type not in CONFIG_MAPPING_NAMES:
        import difflib

        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=3)
        raise ModelLoadError(f"{ctx}: {cfg_file} has model_type {model_type!r}, which this transformers version "
                             f"does not know{' (close: ' + ', '.join(close) + ')' if close else ''}. Fix: correct "
                             f"model_type or upgrade transformers (remote code is not run).")
    if causal_lm and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{ctx}: model_type {model_type!r} in {cfg_file} is not a causal language model "
                             f"architecture. Fix: point {key} at a causal LM (e.g. Llama, Qwen2).")
    try:
        AutoConfig.from_pretrained(str(p))
    except Exception as e:  # noqa: BLE001 - any failure of a user-supplied config
        raise ModelLoadError(f"{ctx}: {cfg_file} can not be loaded: {type(e).__name__}: {_short(e)}. Fix: repair "
                             f"or re-save the config.") from None
    names = _weight_names(p, ctx)
    if lora_targets and names is not None:
        missing = [m for m in lora_targets if not any(n.endswith(f".{m}.weight") or f".{m}." in n for n in names)]
        if missing:
            raise ModelLoadError(f"model.lora.target_modules{_at(origins, 'model.lora.target_modules')}: {missing} "
                                 f"are not modules of {p}. Fix: use module names of this model (e.g. q_proj, "
                                 f"v_proj for Llama-style models).")


def _weight_names(p: Path, ctx: str) -> set[str] | None:
    """Parameter names from the weight headers (None when only .bin files: their names need unpickling)."""
    from safetensors import safe_open

    names: set[str] = set()
    files = sorted(p.glob("*.safetensors"))
    for index in sorted(p.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{ctx}: the shard index {index} can not be read ({type(e).__name__}: "
                                 f"{_short(e)}). Fix: re-save the model.") from None
        for s in shards:
            if not (p / s).is_file():
                raise ModelLoadError(f"{ctx}: {index} lists the shard {s}, which is missing from {p}. Fix: copy "
                                     f"all shards, or re-save the model.")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                names.update(sf.keys())
        except Exception as e:  # noqa: BLE001 - truncated or corrupt file
            raise ModelLoadError(f"{ctx}: the weight file {f} is corrupt or truncated ({type(e).__name__}: "
                                 f"{_short(e)}). Fix: copy it again or re-save the model.") from None
    for f in sorted(p.glob("*.bin")):
        if f.name == "training_args.bin":
            continue
        if not zipfile.is_zipfile(f):
            raise ModelLoadError(f"{ctx}: the weight file {f} is not a readable PyTorch archive (truncated or "
                                 f"corrupt). Fix: copy it again or re-save the model (safetensors preferred).")
    return names if files else None


def check_tokenizer(path: str, key: str, origins: Origins, need_chat_template: bool = False):
    """Load the tokenizer of `path` (cheap); errors name the directory and the fix."""
    from creditrl.models.build import load_tokenizer

    ctx = f"{key}={path}{_at(origins, key)}"
    try:
        tok = load_tokenizer(path)
    except ModelLoadError as e:
        raise ModelLoadError(f"{ctx}: {e}") from None
    if tok.eos_token_id is None:
        raise ModelLoadError(f"{ctx}: the tokenizer in {path} has no EOS token, so responses can not end. Fix: "
                             f"set eos_token in tokenizer_config.json and re-save.")
    if need_chat_template and not getattr(tok, "chat_template", None):
        raise ModelLoadError(f"data.template=chat{_at(origins, 'data.template')} needs a chat template, but the "
                             f"tokenizer in {path} has none. Fix: use a format template like '{{prompt}}', or a "
                             f"tokenizer with chat_template in tokenizer_config.json.")
    try:
        tok("1+1=", add_special_tokens=False)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{ctx}: the tokenizer in {path} fails to encode text ({type(e).__name__}: "
                             f"{_short(e)}). Fix: re-save the tokenizer.") from None
    return tok


# ---------------------------------------------------------------------------------------------------------
# Data files
# ---------------------------------------------------------------------------------------------------------
def _rows(path: Path, ctx: str) -> Iterator[tuple[str, Any]]:
    """(location, row) for every row of a .jsonl/.json/.parquet file; errors name the file and line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise DataError(f"{ctx}: {path}:{line} is not UTF-8 text (byte {raw[e.start]:#04x}). Fix: re-encode "
                            f"the file as UTF-8 or remove that row.") from None
        if suffix == ".json" and text.lstrip()[:1] == "[":
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{ctx}: {path}:{e.lineno} is not valid JSON ({e.msg}).") from None
            for i, r in enumerate(rows):
                yield f"{path} row {i}", r
            return
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                raise DataError(f"{ctx}: {path}:{n} is not a JSON object on one line "
                                f"({getattr(e, 'msg', type(e).__name__)}). Fix: one JSON object per line "
                                f"(JSON Lines).") from None
            yield f"{path}:{n}", r
        return
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
    except Exception as e:  # noqa: BLE001 - corrupt parquet
        raise DataError(f"{ctx}: {path} can not be read as parquet ({type(e).__name__}: {_short(e)}). Fix: "
                        f"re-write the file.") from None
    for i, r in enumerate(table.to_pylist()):
        yield f"{path} row {i}", r


def check_data_files(files: list[str], key: str, fields: dict[str, str], template: str | None,
                     origins: Origins, prompt_field: str | None = None) -> int:
    """Every file of `files` (recipe key `key`) has rows with every field of `fields` ({column: recipe key})
    non-null, a non-empty `prompt_field`, and the template's fields. Returns the number of rows."""
    total = 0
    tmpl_fields = set(template_fields(template, "data.template")) - {"prompt"} if template else set()
    for i, f in enumerate(files):
        path = Path(f)
        ctx = f"{key}[{i}]={f}{_at(origins, key)}"
        if not path.exists():
            raise DataError(f"{ctx}: data file not found: {path}. Fix: correct the path (relative paths are from "
                            f"the directory you run creditrl in: {Path.cwd()}).")
        if not path.is_file():
            raise DataError(f"{ctx}: {path} is not a file. Fix: name a .jsonl or .parquet file.")
        if path.suffix.lower() not in (".jsonl", ".json", ".parquet"):
            raise DataError(f"{ctx}: unsupported format '{path.suffix}'. Fix: use .jsonl (or .json) or .parquet.")
        if path.stat().st_size == 0:
            raise DataError(f"{ctx}: data file {path} is empty. Fix: it needs at least one row.")
        n = 0
        problems: list[str] = []
        n_problems = 0
        for where, row in _rows(path, ctx):
            n += 1
            msg = _row_problem(row, fields, tmpl_fields, prompt_field)
            if msg:
                n_problems += 1
                if len(problems) < MAX_ROW_ERRORS_SHOWN:
                    problems.append(f"{where}: {msg}")
        if n == 0:
            raise DataError(f"{ctx}: data file {path} has no rows. Fix: it needs at least one row.")
        if problems:
            raise DataError(f"{ctx}: {n_problems} of {n} rows are unusable: " + "; ".join(problems)
                            + (" ..." if n_problems > len(problems) else "")
                            + ". Fix: correct or remove those rows, or map the fields with "
                            + ", ".join(sorted(set(fields.values())))
                            + (" and data.template" if tmpl_fields else "") + ".")
        total += n
    return total


def _row_problem(row: Any, fields: dict[str, str], tmpl_fields: set[str], prompt_field: str | None) -> str:
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    for col, rkey in fields.items():
        if col not in row:
            return f"no field '{col}' ({rkey}); the row's fields are: {', '.join(map(str, row)) or '(none)'}"
        if row[col] is None:
            return f"field '{col}' ({rkey}) is null"
    if prompt_field is not None:
        v = row[prompt_field]
        label = fields.get(prompt_field, "data.prompt_field")
        if isinstance(v, (dict, list)):
            return f"field '{prompt_field}' ({label}) is a {type(v).__name__}, not text"
        if not str(v).strip():
            return f"field '{prompt_field}' ({label}) is empty"
    missing = sorted(f for f in tmpl_fields if f not in row)
    if missing:
        return f"data.template uses {', '.join('{' + m + '}' for m in missing)}, which the row does not have " \
               f"(fields: {', '.join(map(str, row))})"
    return ""


# ---------------------------------------------------------------------------------------------------------
# Rewards, checkpoints, the whole recipe
# ---------------------------------------------------------------------------------------------------------
def check_rewards(cfg: RecipeConfig, origins: Origins) -> None:
    from creditrl.rewards.base import RewardConfigError
    from creditrl.rewards.custom import load_function, make_caller

    for i, spec in enumerate(cfg.reward.fns):
        key = f"reward.fns[{i}]"
        if spec.name == "custom":
            ref = spec.options.function
            try:
                make_caller(load_function(ref), spec.options.kwargs, ref)
            except RewardConfigError as e:
                raise ConfigError(f"{key}.function{_at(origins, key)}: {e}") from None
            except Exception as e:  # noqa: BLE001 - anything from user code
                raise ConfigError(f"{key}.function={ref}{_at(origins, key)}: loading it failed: "
                                  f"{type(e).__name__}: {_short(e)}. Fix the reward file.") from None
        elif spec.name == "reward_model":
            check_model(spec.options.path, f"{key}.path", origins, causal_lm=False)
            template_fields(spec.options.template, f"{key}.template")


def check_resume(cfg: RecipeConfig, origins: Origins) -> None:
    r = cfg.checkpoint.resume
    if r in ("never", "auto"):
        return
    p = Path(r)
    ok = (p / "trainer_state.pt").is_file() or (p / "latest").is_file() or (p / "checkpoints" / "latest").is_file()
    if not ok:
        raise ConfigError(f"checkpoint.resume={r}{_at(origins, 'checkpoint.resume')}: not a checkpoint directory "
                          f"(no trainer_state.pt) nor a run directory with checkpoints. Fix: never, auto (the "
                          f"latest checkpoint of this run), or a path to .../checkpoints/step_N.")


def check_recipe(cfg: RecipeConfig, origins: Origins | None = None, command: str = "train") -> None:
    """All file-level checks for `command` (train | sft | eval), before any heavy work."""
    origins = origins or {}
    d = cfg.data
    data_fields = {d.prompt_field: "data.prompt_field", d.answer_field: "data.answer_field"}
    if command == "sft":
        check_model(cfg.sft.init_path, "sft.init_path", origins)
        check_tokenizer(cfg.sft.init_path, "sft.init_path", origins, need_chat_template=d.template == "chat")
        sft_field = cfg.sft.answer_field or d.answer_field
        fields = {**data_fields, sft_field: "sft.answer_field" if cfg.sft.answer_field else "data.answer_field"}
        check_data_files(d.train_files, "data.train_files", fields, d.template, origins, d.prompt_field)
        check_data_files(d.eval_files, "data.eval_files", data_fields, d.template, origins, d.prompt_field)
        return
    lora = cfg.model.lora.target_modules if cfg.model.lora.enabled else None
    check_model(cfg.model.path, "model.path", origins, lora_targets=lora)
    check_tokenizer(cfg.model.path, "model.path", origins, need_chat_template=d.template == "chat")
    if command == "eval":
        check_data_files(d.eval_files or d.train_files, "data.eval_files" if d.eval_files else "data.train_files",
                         data_fields, d.template, origins, d.prompt_field)
        check_rewards(cfg, origins)
        return
    pc = cfg.preference
    if pc is not None:
        pair_fields = {pc.prompt_field: "preference.prompt_field", pc.chosen_field: "preference.chosen_field",
                       pc.rejected_field: "preference.rejected_field"}
        check_data_files(pc.train_files, "preference.train_files", pair_fields, d.template, origins,
                         pc.prompt_field)
        check_data_files(pc.eval_files, "preference.eval_files", pair_fields, d.template, origins, pc.prompt_field)
        for key in ("reference_path", "cdpo_positive_path", "cdpo_negative_path"):
            if getattr(pc, key) is not None:
                check_model(getattr(pc, key), f"preference.{key}", origins)
        check_data_files(d.eval_files or d.train_files, "data.eval_files" if d.eval_files else "data.train_files",
                         data_fields, d.template, origins, d.prompt_field)
    else:
        check_data_files(d.train_files, "data.train_files", data_fields, d.template, origins, d.prompt_field)
        check_data_files(d.eval_files, "data.eval_files", data_fields, d.template, origins, d.prompt_field)
        check_rewards(cfg, origins)
    check_resume(cfg, origins)


def _short(e: Any, n: int = 300) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 3] + "..."
