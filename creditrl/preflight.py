"""Checks of everything a recipe points at, run before any heavy work (`creditrl train`, `sft`, `eval` and
`creditrl config validate` all call `check_recipe`).

The schema (creditrl/config/schema.py) checks each value on its own: ranges, signs, divisibility, templates.
This module checks the files the values name, cheaply (no model weights are loaded):

- model directories (`model.path`, `sft.init_path`, preference reference / cDPO models, reward models):
  config.json is a JSON object with a `model_type` this transformers knows (a causal LM where one is needed),
  the weight files have readable headers (safetensors header parse, shards of an index exist, .bin files are
  torch zip archives), LoRA target modules exist among the weights;
- the tokenizer loads, has an EOS token, and has a chat template when `data.template: chat`, when
  `data.system_prompt` is set (template auto) and when the prompts are message lists;
- data sources exist, are .jsonl/.json/.parquet/.csv files or save_to_disk folders (`folder:split`), decode as
  UTF-8, parse row by row, are not empty, every row has the mapped (dotted) fields (no null, prompts non-empty
  text or valid message lists, not with a format-string template), the template's fields exist, and
  `data.answer_format: gsm8k` answers have a '####' line;
- custom reward files exist and import, their function's signature fits;
- `checkpoint.resume`, when a path, is a checkpoint or run directory.
- the `logging.report_to` trackers (accelerate) are installed.

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


def check_tokenizer(path: str, key: str, origins: Origins, need_chat_template: bool = False,
                    chat_key: str = "data.template"):
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
        what = "data.template=chat" if chat_key == "data.template" else \
            f"{chat_key} (a system message, given with data.template=auto through the chat template)"
        raise ModelLoadError(f"{what}{_at(origins, chat_key)} needs a chat template, but the tokenizer in {path} has "
                             f"none. Fix: use a format template like '{{prompt}}' (without data.system_prompt), or a "
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
def _rows(path: Path, ctx: str, split: str | None = None, role: str = "train",
          key: str = "data.train_files") -> Iterator[tuple[str, Any]]:
    """(location, row) for every row of a .jsonl/.json/.parquet/.csv file or a save_to_disk folder; errors name
    the file and line."""
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".csv":
        from creditrl.data.sources import read_source

        spec = f"{path}:{split}" if split is not None else str(path)
        try:
            ds, _ = read_source(spec, role, key)
        except DataError as e:
            if "is empty" in str(e):
                return  # reported as "no rows" by the caller
            raise DataError(f"{ctx}: {e}") from None
        for i, r in enumerate(ds.to_list()):
            yield f"{path} row {i}" + (" (line {})".format(i + 2) if suffix == ".csv" else ""), r
        return
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
                     origins: Origins, prompt_field: str | None = None, *, answer_field: str | None = None,
                     answer_format: str = "raw", no_chat_template: str | None = None) -> int:
    """Every source of `files` (recipe key `key`: .jsonl/.json/.parquet/.csv files, save_to_disk folders,
    ``folder:split``) has rows with every (dotted) field of `fields` ({field path: recipe key}) non-null, a
    `prompt_field` that is non-empty text or a valid message list (not with a format-string template, nor with a
    tokenizer without chat template: `no_chat_template` is then the tokenizer's path), the template's fields, and
    an `answer_field` that `answer_format` can read. Returns the number of rows."""
    from creditrl.data.sources import parse_source, source_problem

    total = 0
    tmpl_fields = set(template_fields(template, "data.template")) - {"prompt"} if template else set()
    role = "eval" if key.endswith("eval_files") else "train"
    opts = {"template": template, "answer_field": answer_field, "answer_format": answer_format,
            "no_chat_template": no_chat_template}
    for i, f in enumerate(files):
        path, split = parse_source(f)
        ctx = f"{key}[{i}]={f}{_at(origins, key)}"
        problem = source_problem(f, key)
        if problem:
            raise DataError(f"{ctx}: {problem}")
        n = 0
        problems: list[str] = []
        n_problems = 0
        for where, row in _rows(path, ctx, split, role, key):
            n += 1
            msg = _row_problem(row, fields, tmpl_fields, prompt_field, **opts)
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


def _row_problem(row: Any, fields: dict[str, str], tmpl_fields: set[str], prompt_field: str | None, *,
                 template: str | None = None, answer_field: str | None = None, answer_format: str = "raw",
                 no_chat_template: str | None = None) -> str:
    from creditrl.data.answers import extract_answer
    from creditrl.data.fields import MISSING, resolve
    from creditrl.data.messages import validate_messages

    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    values = {}
    for col, rkey in fields.items():
        v, why = resolve(row, col)
        if v is MISSING:
            if col.split(".")[0] not in row:
                return f"no field '{col}' ({rkey}); the row's fields are: {', '.join(map(str, row)) or '(none)'}"
            return f"no field '{col}' ({rkey}): {why}"
        if v is None:
            return f"field '{col}' ({rkey}) is null"
        values[col] = v
    if prompt_field is not None:
        v = values[prompt_field] if prompt_field in values else resolve(row, prompt_field)[0]
        label = fields.get(prompt_field, "data.prompt_field")
        desc = f"field '{prompt_field}' ({label})"
        if isinstance(v, (list, tuple)):
            try:
                validate_messages(v, "", desc)
            except DataError as e:
                return str(e)
            if template not in (None, "auto", "chat"):
                return (f"{desc} is a list of messages, but data.template={template!r} is a format string for text "
                        f"prompts. Fix: data.template: auto (the tokenizer's chat template)")
            if no_chat_template is not None:
                return (f"{desc} is a list of messages, but the tokenizer of {no_chat_template} has no chat template. "
                        f"Fix: a chat model's tokenizer, or text prompts")
        elif isinstance(v, dict):
            return (f"{desc} is a dict (keys: {', '.join(map(str, v))}), not text nor a list of messages. Fix: a "
                    f"dotted path to the text, e.g. {prompt_field}.{next(iter(v), 'key')}")
        elif not str(v).strip():
            return f"{desc} is empty"
    if answer_field is not None and answer_field in values:
        try:
            extract_answer(values[answer_field], answer_format, "", f"field '{answer_field}' (data.answer_field)")
        except DataError as e:
            return str(e)
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
            if spec.options.use_chat_template:
                from creditrl.models.build import load_tokenizer

                if not getattr(load_tokenizer(spec.options.path), "chat_template", None):
                    raise ConfigError(f"{key}.use_chat_template=true{_at(origins, key)}: the tokenizer in "
                                      f"{spec.options.path} has no chat template. Fix: set use_chat_template: false "
                                      f"and a text template (e.g. '{{prompt}}{{response}}'), or add chat_template "
                                      f"to its tokenizer_config.json.")


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


# pip package of each tracker accelerate supports (the fix named when one is not installed)
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny", "comet_ml": "comet_ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}


def _missing_trackers(names: list[str]) -> list[str]:
    """The trackers of `names` whose package accelerate does not find."""
    if not names:
        return []
    from accelerate.tracking import get_available_trackers

    available = {str(t.value) for t in get_available_trackers()}
    return [n for n in names if n not in available]


def check_logging(cfg: RecipeConfig, origins: Origins) -> None:
    """Every `logging.report_to` tracker (and the deprecated `logging.tensorboard`) is installed."""
    names = list(cfg.logging.report_to) + (["tensorboard"] if cfg.logging.tensorboard else [])
    for name in _missing_trackers(names):
        key = "logging.report_to" if name in cfg.logging.report_to else "logging.tensorboard"
        value = cfg.logging.report_to if key == "logging.report_to" else cfg.logging.tensorboard
        pkg = TRACKER_PACKAGES.get(name, name)
        extra = " (or pip install 'creditrl[tracking]' for wandb and mlflow)" if name in ("wandb", "mlflow") else ""
        raise ConfigError(f"{key}={value}{_at(origins, key)}: the tracker {name!r} needs the package {pkg}, which "
                          f"is not installed. Fix: pip install {pkg}{extra}, or remove {name!r} from {key}.")


def _chat_need(d) -> dict:
    """check_tokenizer's chat-template requirement for the data config `d` (chat template, or a system prompt)."""
    if d.template == "chat":
        return {"need_chat_template": True}
    return {"need_chat_template": d.template == "auto" and d.system_prompt is not None,
            "chat_key": "data.system_prompt"}


def _data_opts(d, tok, path: str) -> dict:
    """check_data_files' answer and chat-template options for the data.* files."""
    return {"answer_field": d.answer_field, "answer_format": d.answer_format,
            "no_chat_template": None if getattr(tok, "chat_template", None) else path}


def check_recipe(cfg: RecipeConfig, origins: Origins | None = None, command: str = "train") -> None:
    """All file-level checks for `command` (train | sft | eval), before any heavy work."""
    origins = origins or {}
    d = cfg.data
    data_fields = {d.prompt_field: "data.prompt_field", d.answer_field: "data.answer_field"}
    if command == "sft":
        check_model(cfg.sft.init_path, "sft.init_path", origins)
        tok = check_tokenizer(cfg.sft.init_path, "sft.init_path", origins, **_chat_need(d))
        dopts = _data_opts(d, tok, cfg.sft.init_path)
        sft_field = cfg.sft.answer_field or d.answer_field
        fields = {**data_fields, sft_field: "sft.answer_field" if cfg.sft.answer_field else "data.answer_field"}
        files, key = (d.train_files, "data.train_files") if cfg.sft.train_files is None else \
            (cfg.sft.train_files, "sft.train_files")
        check_data_files(files, key, fields, d.template, origins, d.prompt_field, **dopts)
        check_data_files(d.eval_files, "data.eval_files", data_fields, d.template, origins, d.prompt_field, **dopts)
        return
    lora = cfg.model.lora.target_modules if cfg.model.lora.enabled else None
    check_model(cfg.model.path, "model.path", origins, lora_targets=lora)
    tok = check_tokenizer(cfg.model.path, "model.path", origins, **_chat_need(d))
    dopts = _data_opts(d, tok, cfg.model.path)
    if command == "eval":
        check_data_files(d.eval_files or d.train_files, "data.eval_files" if d.eval_files else "data.train_files",
                         data_fields, d.template, origins, d.prompt_field, **dopts)
        check_rewards(cfg, origins)
        return
    pc = cfg.preference
    if pc is not None:
        pair_fields = {pc.prompt_field: "preference.prompt_field", pc.chosen_field: "preference.chosen_field",
                       pc.rejected_field: "preference.rejected_field"}
        check_data_files(pc.train_files, "preference.train_files", pair_fields, d.template, origins,
                         pc.prompt_field, no_chat_template=dopts["no_chat_template"])
        check_data_files(pc.eval_files, "preference.eval_files", pair_fields, d.template, origins, pc.prompt_field,
                         no_chat_template=dopts["no_chat_template"])
        for key in ("reference_path", "cdpo_positive_path", "cdpo_negative_path"):
            if getattr(pc, key) is not None:
                check_model(getattr(pc, key), f"preference.{key}", origins)
        check_data_files(d.eval_files or d.train_files, "data.eval_files" if d.eval_files else "data.train_files",
                         data_fields, d.template, origins, d.prompt_field, **dopts)
    else:
        check_data_files(d.train_files, "data.train_files", data_fields, d.template, origins, d.prompt_field, **dopts)
        check_data_files(d.eval_files, "data.eval_files", data_fields, d.template, origins, d.prompt_field, **dopts)
        check_rewards(cfg, origins)
        if getattr(cfg, "critic", None) is not None and cfg.critic.path is not None:  # PPO's value model
            check_model(cfg.critic.path, "critic.path", origins, causal_lm=False)
    check_resume(cfg, origins)
    check_logging(cfg, origins)


def _short(e: Any, n: int = 300) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 3] + "..."
