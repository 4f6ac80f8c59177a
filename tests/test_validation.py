"""One validation layer (issue 12): every class of user mistake in a recipe, an override, a data file, a model or
tokenizer directory or a reward file ends in one message naming the file/key, the bad value and the fix, and
exit code 2; never a traceback and never a silent wrong run. Ends with a seeded fuzz test over the shipped
recipes and data files: "clear error or valid config, never anything else"."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from creditrl.cli import app
from creditrl.config import ConfigError, load_config
from creditrl.config.loader import RECIPES_DIR
from creditrl.data import DataError
from creditrl.models.build import ModelLoadError
from creditrl.preflight import check_recipe
from creditrl.rewards.base import RewardConfigError

USER_ERRORS = (ConfigError, DataError, ModelLoadError, RewardConfigError)
runner = CliRunner()


def _err(fn, *args, **kw) -> str:
    with pytest.raises(USER_ERRORS) as ei:
        fn(*args, **kw)
    return " ".join(str(ei.value).split())


# ---------------------------------------------------------------------------------------------------------
# Values: ranges, signs, divisibility, templates (schema), each message names the key and the value
# ---------------------------------------------------------------------------------------------------------
VALUE_CASES = [
    # (override, phrases in the message)
    ("train.mini_batch_prompts=0", ["train.mini_batch_prompts", "got 0"]),
    ("train.mini_batch_prompts=-2", ["train.mini_batch_prompts", "got -2"]),
    ("train.mini_batch_prompts=64", ["train.mini_batch_prompts", "64"]),
    ("train.mini_batch_prompts=3", ["not divisible", "Fix"]),
    ("train.global_batch_prompts=0", ["train.global_batch_prompts", "got 0"]),
    ("train.steps=-1", ["train.steps", "got -1"]),
    ("train.ppo_epochs=0", ["train.ppo_epochs"]),
    ("train.lr=-1e-3", ["train.lr", "-0.001"]),
    ("train.lr=0", ["train.lr"]),
    ("train.lr=.nan", ["train.lr", "nan"]),
    ("train.lr=.inf", ["train.lr", "inf"]),
    ("train.adam_betas=[1.5,0.9]", ["train.adam_betas", "[1.5, 0.9]"]),
    ("train.adam_betas=[0.9]", ["train.adam_betas"]),
    ("train.adam_eps=0", ["train.adam_eps"]),
    ("train.max_grad_norm=0", ["train.max_grad_norm"]),
    ("train.weight_decay=-0.1", ["train.weight_decay", "-0.1"]),
    ("train.warmup_steps=-5", ["train.warmup_steps", "-5"]),
    ("train.min_lr_ratio=2", ["train.min_lr_ratio", "2"]),
    ("train.dynamic_sampling_max_rounds=0", ["train.dynamic_sampling_max_rounds"]),
    ("train.micro_batch_tokens_per_worker=0", ["train.micro_batch_tokens_per_worker"]),
    ("rollout.max_new_tokens=0", ["rollout.max_new_tokens", "got 0"]),
    ("rollout.generation_batch_prompts=0", ["rollout.generation_batch_prompts"]),
    ("rollout.top_p=0", ["rollout.top_p", "0"]),
    ("rollout.top_p=1.5", ["rollout.top_p", "1.5"]),
    ("rollout.temperature=-1", ["rollout.temperature", "-1"]),
    ("rollout.n_samples=0", ["rollout.n_samples"]),
    ("seed=-1", ["seed", "-1"]),
    ("seed=99999999999", ["seed"]),
    ("name=''", ["name"]),
    ("output_dir=runs/{nam}", ["output_dir", "{nam}", "{name}"]),
    ("output_dir='runs/{name'", ["output_dir", "runs/{name"]),
    ("output_dir=''", ["output_dir"]),
    ("data.template='\\boxed{} {prompt}'", ["data.template", "boxed", "{{}}"]),
    ("data.template='{prompt'", ["data.template", "{prompt"]),
    ("data.template='{prompt}}'", ["data.template"]),
    ("data.template='{0} {prompt}'", ["data.template", "{0}"]),
    ("data.template='{prompt.upper}'", ["data.template", "prompt.upper"]),
    ("data.template='Answer:'", ["data.template", "Answer:", "{prompt}"]),
    ("data.template={prompt}", ["data.template", "quote"]),
    ("data.eval_fraction=0", ["data.eval_fraction"]),
    ("data.max_prompt_tokens=0", ["data.max_prompt_tokens"]),
    ("data.train_files=[]", ["data.train_files"]),
    ("data.prompt_field=''", ["data.prompt_field"]),
    ("model.path=''", ["model.path"]),
    ("model.lora.r=0", ["model.lora.r"]),
    ("model.lora.dropout=1.5", ["model.lora.dropout", "1.5"]),
    ("eval.max_prompts=0", ["eval.max_prompts"]),
    ("eval.pass_k=-1", ["eval.pass_k"]),
    ("eval.temperature=0", ["eval.temperature"]),
    ("checkpoint.keep=0", ["checkpoint.keep"]),
    ("checkpoint.every_steps=-1", ["checkpoint.every_steps"]),
    ("sft.steps=0", ["sft.steps"]),
    ("sft.lr=-1", ["sft.lr"]),
    ("reward.workers=0", ["reward.workers"]),
    ("reward.timeout_s=0", ["reward.timeout_s"]),
    ("resources.rollout_gpu_fraction=1.5", ["resources.rollout_gpu_fraction"]),
    ("train.steps=ten", ["train.steps", "ten", "integer"]),
    ("train.stepz=3", ["train.stepz", "train.steps"]),
    ("rollout=3", ["rollout", "3"]),
    ("extends=tiny_dapo", ["extends"]),
    ("=3", ["'=3'"]),
    ("train..steps=3", ["train..steps"]),
    ("train.steps", ["train.steps", "key.sub=value"]),
    ("train.steps=[1", ["train.steps=[1", "YAML"]),
]


@pytest.mark.parametrize("override,phrases", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_bad_values_name_key_value_and_where(override, phrases):
    msg = _err(load_config, "tiny_grpo", [override])
    for p in phrases:
        assert p in msg, (p, msg)
    if "=" in override and not override.startswith(("=", "extends")) and ".." not in override:
        assert "override" in msg, msg  # where the value was set


def test_value_set_in_a_file_names_file_and_line(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("extends: tiny_grpo\ntrain:\n  lr: -0.5\n")
    msg = _err(load_config, r)
    assert "train.lr" in msg and "-0.5" in msg and f"{r}:3" in msg


def test_key_overridden_in_child_recipe_names_the_child_file(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("extends: tiny_grpo\nrollout:\n  max_new_tokens: 0\n")
    msg = _err(load_config, r)
    assert f"{r}:3" in msg and "tiny_grpo.yaml" not in msg


# ---------------------------------------------------------------------------------------------------------
# Recipe files: YAML structure
# ---------------------------------------------------------------------------------------------------------
RECIPE_FILE_CASES = {
    "duplicate_key": (b"extends: tiny_grpo\ntrain:\n  steps: 3\nrollout:\n  n_samples: 4\ntrain:\n  lr: 0.1\n",
                      ["duplicate key 'train'", ":6", "line 2"]),
    "duplicate_nested_key": (b"extends: tiny_grpo\ntrain:\n  steps: 3\n  steps: 4\n",
                             ["duplicate key 'train.steps'", ":4", "line 3"]),
    "recursive_anchor": (b"extends: tiny_grpo\ntrain: &a\n  x: *a\n", ["anchor"]),
    "recursive_list_anchor": (b"extends: tiny_grpo\nname: &a [*a]\n", ["anchor"]),
    "alias_bomb": (b"a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                   b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
                   ["aliases"]),
    "extends_list": (b"extends: [tiny_grpo]\n", ["extends", "['tiny_grpo']", "r.yaml:1"]),
    "extends_missing": (b"extends: no_such_recipe\n", ["extends", "no_such_recipe", "not found"]),
    "extends_empty": (b"extends:\nname: x\n", ["extends", "None"]),
    "not_utf8": (b"extends: tiny_grpo\nname: caf\xe9\n", ["UTF-8", "r.yaml:2"]),
    "empty": (b"", ["empty"]),
    "only_comments": (b"# nothing\n", ["empty"]),
    "empty_mapping": (b"{}\n", ["empty"]),
    "a_list": (b"- a\n- b\n", ["mapping", "list"]),
    "a_scalar": (b"hello\n", ["mapping", "str"]),
    "bad_yaml": (b"extends: tiny_grpo\ntrain:\n  steps: [1, 2\n", ["not valid YAML", "r.yaml:"]),
    "tab_indent": (b"extends: tiny_grpo\ntrain:\n\tsteps: 3\n", ["not valid YAML"]),
    "list_key": (b"extends: tiny_grpo\n? [a, b]\n: 1\n", ["key", "r.yaml:2"]),
    "unquoted_template": (b"extends: tiny_grpo\ndata:\n  template: {prompt}\n", ["data.template", "quote"]),
    "literal_brace_template": (b"extends: tiny_grpo\ndata:\n  template: 'Put the answer in \\boxed{}: {prompt}'\n",
                               ["data.template", "{{}}", "r.yaml:3"]),
}


@pytest.mark.parametrize("case", list(RECIPE_FILE_CASES))
def test_bad_recipe_files(case, tmp_path):
    content, phrases = RECIPE_FILE_CASES[case]
    r = tmp_path / "r.yaml"
    r.write_bytes(content)
    msg = _err(load_config, r)
    for p in phrases:
        assert p in msg, (p, msg)


def test_recipe_path_is_a_directory_or_missing(tmp_path):
    assert "directory" in _err(load_config, tmp_path)
    assert "not found" in _err(load_config, tmp_path / "nope.yaml")


def test_yaml_merge_keys_still_work(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("extends: tiny_grpo\ntrain: &t\n  steps: 7\neval:\n  max_prompts: 9\n")
    assert load_config(r).train.steps == 7
    r.write_text("extends: tiny_grpo\n_base: &b {steps: 7, lr: 0.01}\n")
    assert "_base" in _err(load_config, r)  # unknown key, named


# ---------------------------------------------------------------------------------------------------------
# Files the recipe names: models, tokenizers, data, rewards, checkpoints (creditrl/preflight.py)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory laid out like `creditrl tiny init` + sft + make_pairs (and `tiny init --task countdown` + sft,
    with a smaller task), so the shipped recipes resolve."""
    from creditrl.data.countdown import CountdownSpec, write_countdown_task
    from creditrl.data.synthetic import write_arithmetic_task
    from creditrl.models.tiny import build_tiny_model
    from creditrl.preference.data import write_arithmetic_pairs

    root = tmp_path_factory.mktemp("work")
    build_tiny_model(root / "tiny" / "base", seed=0)
    write_arithmetic_task(root / "tiny" / "data", seed=0)
    write_arithmetic_pairs(root / "tiny")
    for name in ("sft", "cdpo_pos", "cdpo_neg"):
        shutil.copytree(root / "tiny" / "base", root / "tiny" / name)
    write_countdown_task(root / "countdown", CountdownSpec(n_numbers=3, max_number=9, max_target=40,
                                                           max_intermediate=60, n_train=8, n_sft=8, n_eval=4,
                                                           n_pairs_train=2, n_pairs_eval=2))
    for name in ("base", "sft"):
        shutil.copytree(root / "tiny" / "base", root / "countdown" / name)
    return root


@pytest.fixture
def in_work(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    return workdir


def _validate(recipe, overrides=(), command="train"):
    origins: dict[str, str] = {}
    cfg = load_config(recipe, list(overrides), origins)
    check_recipe(cfg, origins, command)
    return cfg


def _copy_model(work: Path, name: str) -> Path:
    dst = work / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(work / "tiny" / "base", dst)
    return dst


def test_shipped_recipes_pass_all_file_checks(in_work):
    for r in sorted(RECIPES_DIR.glob("*.yaml")):
        _validate(r.stem)
    _validate("tiny_grpo", command="sft")
    _validate("tiny_grpo", command="eval")
    _validate("countdown_grpo", command="sft")  # checks sft.train_files (the SFT corpus has sft_answer)


def test_sft_train_files_are_checked_under_their_own_key(in_work, tmp_path):
    msg = _err(_validate, "countdown_grpo", [f"sft.train_files=[{tmp_path / 'missing.jsonl'}]"], command="sft")
    assert "sft.train_files" in msg and "not found" in msg
    no_field = tmp_path / "rl_prompts.jsonl"
    no_field.write_text(json.dumps({"prompt": "3,4 to 12:", "answer": "12"}) + "\n")
    msg = _err(_validate, "countdown_grpo", [f"sft.train_files=[{no_field}]"], command="sft")
    assert "sft_answer" in msg and "sft.answer_field" in msg
    assert "sft.train_files is empty" in _err(_validate, "countdown_grpo", ["sft.train_files=[]"])
    _validate("countdown_grpo", [f"sft.train_files=[{tmp_path / 'missing.jsonl'}]"])  # not read by `train`


def _mutate_config_json(d: Path, text: str) -> None:
    (d / "config.json").write_text(text)


MODEL_CASES = {
    "missing_dir": (None, ["model.path", "not found"]),
    "invalid_config_json": (lambda d: _mutate_config_json(d, "{not json"), ["config.json", "not valid JSON"]),
    "config_json_list": (lambda d: _mutate_config_json(d, "[1, 2]"), ["config.json", "JSON object"]),
    "unknown_model_type": (lambda d: _mutate_config_json(d, json.dumps({"model_type": "llamma"})),
                           ["'llamma'", "llama", "model_type"]),
    "no_model_type": (lambda d: _mutate_config_json(d, json.dumps({"hidden_size": 4})), ["model_type"]),
    "not_causal_lm": (lambda d: _mutate_config_json(d, json.dumps({"model_type": "vit"})), ["causal"]),
    "bad_config_values": (lambda d: _mutate_config_json(
        d, json.dumps({**json.loads((d / "config.json").read_text()), "rope_scaling": "x"})), ["config.json"]),
    "truncated_safetensors": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:5000]), ["model.safetensors", "truncated"]),
    "garbage_safetensors": (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64),
                            ["model.safetensors", "corrupt"]),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), ["no weights"]),
    "corrupt_tokenizer_json": (lambda d: (d / "tokenizer.json").write_text("{broken"), ["tokenizer", "Fix"]),
    "no_tokenizer": (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
                     ["no tokenizer"]),
    "corrupt_tokenizer_config": (lambda d: (d / "tokenizer_config.json").write_bytes(b"\xff\xfe{"),
                                 ["tokenizer"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_and_tokenizer_dirs(case, in_work):
    mutate, phrases = MODEL_CASES[case]
    d = in_work / "m_bad"
    if mutate is None:
        shutil.rmtree(d, ignore_errors=True)
    else:
        _copy_model(in_work, "m_bad")
        mutate(d)
    msg = _err(_validate, "tiny_grpo", ["model.path=m_bad"])
    assert "model.path=m_bad" in msg and "override" in msg, msg
    for p in phrases:
        assert p in msg, (p, msg)


def test_chat_template_needed_and_lora_targets(in_work):
    msg = _err(_validate, "tiny_grpo", ["data.template=chat"])
    assert "chat template" in msg and "data.template" in msg
    msg = _err(_validate, "tiny_grpo", ["model.lora.enabled=true", "model.lora.target_modules=[qkv]"])
    assert "model.lora.target_modules" in msg and "qkv" in msg
    _validate("tiny_grpo", ["model.lora.enabled=true"])


def _write(path: Path, rows) -> str:
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


DATA_CASES = {
    "missing": (None, ["not found"]),
    "empty_file": (b"", ["empty"]),
    "blank_lines": (b"\n\n", ["no rows"]),
    "not_utf8": (b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "1"}\n', ["UTF-8", ":2"]),
    "bad_json_line": (b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": \n', ["JSON", ":2"]),
    "not_an_object": ([[1, 2]], ["JSON object"]),
    "null_prompt": ([{"prompt": "1+1=", "answer": "2"}, {"prompt": None, "answer": "3"}],
                    ["'prompt'", "null", ":2"]),
    "null_answer": ([{"prompt": "1+1=", "answer": None}], ["'answer'", "null", ":1"]),
    "missing_field_in_some_rows": ([{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2="}],
                                   ["no field 'answer'", "data.answer_field", ":2"]),
    "wrong_field_names": ([{"question": "1+1=", "answer": "2"}], ["no field 'prompt'", "question"]),
    "all_empty_prompts": ([{"prompt": "", "answer": "2"}, {"prompt": "  ", "answer": "3"}], ["empty", "2 of 2"]),
    "prompt_is_a_mapping": ([{"prompt": {"a": 1}, "answer": "2"}], ["not text"]),
    "template_field_missing": ([{"prompt": "1+1=", "answer": "2"}], ["{context}"]),
    "directory": ("dir", ["not a file"]),
    "bad_suffix": ("csv", ["unsupported format"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_files(case, in_work, tmp_path):
    rows, phrases = DATA_CASES[case]
    extra = []
    if rows is None:
        f = str(tmp_path / "missing.jsonl")
    elif rows == "dir":
        f = str(tmp_path)
    elif rows == "csv":
        f = str(tmp_path / "d.txt")  # .csv is a supported format since issue 13
        Path(f).write_text("prompt,answer\n1+1=,2\n")
    else:
        f = _write(tmp_path / "d.jsonl", rows)
    if case == "template_field_missing":
        extra = ["data.template='{context} {prompt}'"]
    for key in ("data.train_files",) if extra else ("data.train_files", "data.eval_files"):
        msg = _err(_validate, "tiny_grpo", [f"{key}=[{f}]", *extra])
        assert key in msg and "override" in msg, msg
        for p in phrases:
            assert p in msg, (p, msg)


def test_bad_parquet_files(in_work, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty)
    assert "no rows" in _err(_validate, "tiny_grpo", [f"data.train_files=[{empty}]"])
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"prompt": ["1+1=", None], "answer": ["2", "3"]}), nulls)
    msg = _err(_validate, "tiny_grpo", [f"data.train_files=[{nulls}]"])
    assert "null" in msg and "row 1" in msg
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    assert "parquet" in _err(_validate, "tiny_grpo", [f"data.train_files=[{broken}]"])


def test_null_fields_never_become_the_text_none(tmp_path):
    """Defence in depth: the data loader itself refuses nulls (a run that skips the preflight)."""
    from transformers import AutoTokenizer  # noqa: F401

    from creditrl.data.dataset import load_rows

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1] * len(text)}

    f = _write(tmp_path / "d.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": None, "answer": "3"}])
    with pytest.raises(DataError, match="null"):
        load_rows([f], "prompt", "answer", "{prompt}", Tok(), 100)
    f = _write(tmp_path / "e.jsonl", [{"prompt": "1+1=", "answer": None}])
    with pytest.raises(DataError, match="null"):
        load_rows([f], "prompt", "answer", "{prompt}", Tok(), 100)


def test_preference_pair_files(in_work, tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2"}])
    msg = _err(_validate, "tiny_dpo", [f"preference.train_files=[{f}]"])
    assert "preference.train_files" in msg and "no field 'rejected'" in msg and "preference.rejected_field" in msg
    msg = _err(_validate, "tiny_cdpo", ["preference.cdpo_negative_path=nowhere"])
    assert "preference.cdpo_negative_path" in msg and "nowhere" in msg


REWARD_CASES = {
    "missing_file": (None, ["does not exist", "reward.fns[0]"]),
    "syntax_error": ("def f(:\n", ["SyntaxError"]),
    "raises_on_import": ("raise RuntimeError('boom')\n", ["RuntimeError", "boom"]),
    "exits_on_import": ("import sys\nsys.exit(3)\n", ["SystemExit"]),
    "no_function": ("def g(response): return 1.0\n", ["no attribute 'f'", "g"]),
    "bad_signature": ("def f(x, y): return 1.0\n", ["can not be filled"]),
}


@pytest.mark.parametrize("case", list(REWARD_CASES))
def test_bad_custom_reward_files(case, in_work, tmp_path):
    src, phrases = REWARD_CASES[case]
    path = tmp_path / f"rw_{case}.py"
    if src is not None:
        path.write_text(src)
    ov = f"reward.fns=[{{name: custom, function: '{path}:f'}}]"
    msg = _err(_validate, "tiny_grpo", [ov])
    assert str(path) in msg, msg
    for p in phrases:
        assert p in msg, (p, msg)


def test_resume_path_must_be_a_checkpoint(in_work, tmp_path):
    msg = _err(_validate, "tiny_grpo", [f"checkpoint.resume={tmp_path}"])
    assert "checkpoint.resume" in msg and str(tmp_path) in msg and "auto" in msg


# ---------------------------------------------------------------------------------------------------------
# End to end through the CLI: exit 2, one message, no traceback, brackets kept, validate == train
# ---------------------------------------------------------------------------------------------------------
def _cli_error(args, *phrases):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for p in phrases:
        assert p in text, (p, result.output)


def test_cli_validate_and_train_report_the_same_errors(in_work, tmp_path):
    for cmd in (["config", "validate"], ["train"]):
        _cli_error([*cmd, "tiny_grpo", "train.adam_betas=[1.5,0.9]"], "train.adam_betas", "[1.5, 0.9]")
        _cli_error([*cmd, "tiny_grpo", "data.template='\\boxed{} {prompt}'"], "data.template", "{{}}")
        _cli_error([*cmd, "tiny_grpo", f"reward.fns=[{{name: custom, function: '{tmp_path}/none.py:f'}}]"],
                   "does not exist")
        _cli_error([*cmd, str(tmp_path)], "directory")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": null, "answer": "2"}\n')
    _cli_error(["config", "validate", "tiny_grpo", f"data.train_files=[{bad}]"], "null", "data.train_files")
    _cli_error(["sft", "tiny_grpo", "sft.init_path=nowhere"], "sft.init_path", "nowhere")
    _cli_error(["eval", "tiny_grpo", "model.path=nowhere"], "model.path", "nowhere")
    assert runner.invoke(app, ["config", "validate", "tiny_grpo"]).exit_code == 0
    assert runner.invoke(app, ["config", "validate", "tiny_grpo", "--for", "sft"]).exit_code == 0


# ---------------------------------------------------------------------------------------------------------
# Fuzz: seeded mutations of every shipped recipe and of the data files
# ---------------------------------------------------------------------------------------------------------
def _leaves(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        yield prefix + (k,), v


BAD_VALUES = [0, -1, -2, 1.5, -0.5, 1e30, "", "x", "{nam}", "{", "\\boxed{}", None, [], [1.5, 0.9], {"a": 1}, True,
              "0", 10**20, ".nan", "[abc]"]


def _mutate_recipe(rng: random.Random, text: str) -> bytes:
    data = yaml.safe_load(text) or {}
    kind = rng.randrange(7)
    if kind <= 2 and data:
        paths = [p for p, _ in _leaves(data)]
        path = rng.choice(paths)
        node = data
        for k in path[:-1]:
            node = node[k]
        if kind == 0:
            del node[path[-1]]
        else:
            node[path[-1]] = rng.choice(BAD_VALUES)
        return yaml.safe_dump(data).encode()
    lines = text.splitlines(keepends=True)
    if kind == 3:  # duplicate a line (top-level: a duplicated key)
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind == 4:  # break braces / quotes
        i = rng.randrange(len(lines))
        lines[i] = lines[i].replace("{", rng.choice(["", "{{", "{x"]), 1).replace("[", rng.choice(["", "[["]), 1)
    elif kind == 5:  # truncate
        return text.encode()[: rng.randrange(len(text) + 1)]
    else:  # bad bytes
        raw = bytearray(text.encode())
        raw.insert(rng.randrange(len(raw) + 1), rng.choice([0xFF, 0xC3, 0x00, 0x09]))
        return bytes(raw)
    return "".join(lines).encode()


def _mutate_data(rng: random.Random, src: Path, dst: Path) -> None:
    raw = src.read_bytes()[:4000]
    raw = raw[: raw.rfind(b"\n") + 1]
    kind = rng.randrange(6)
    if kind == 0:
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif kind == 1:
        raw = bytearray(raw)
        raw[rng.randrange(len(raw))] = rng.choice([0xFF, 0x80, ord("{"), ord("\n")])
        raw = bytes(raw)
    else:
        rows = [json.loads(line) for line in raw.decode().splitlines()]
        r = rng.choice(rows)
        k = rng.choice(sorted(r))
        if kind == 2:
            r[k] = None
        elif kind == 3:
            del r[k]
        elif kind == 4:
            r[k] = rng.choice(["", " ", {"x": 1}, [1], 3])
        else:
            r["prompt2"] = r.pop(k)
        raw = "".join(json.dumps(x) + "\n" for x in rows).encode()
    dst.write_bytes(raw)


def _clean_or_valid(fn, *args) -> str:
    try:
        fn(*args)
        return "ok"
    except USER_ERRORS as e:
        msg = str(e)
        assert msg.strip() and "Traceback" not in msg
        return "error"
    # anything else propagates and fails the test, with its traceback


def test_fuzz_recipes_and_data_clean_error_or_valid(in_work, tmp_path):
    rng = random.Random(12)
    recipes = sorted(RECIPES_DIR.glob("*.yaml"))
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        src = rng.choice(recipes)
        r = tmp_path / f"m{i}_{src.name}"
        r.write_bytes(_mutate_recipe(rng, src.read_text()))
        outcomes[_clean_or_valid(_validate, r)] += 1
    train, evals = in_work / "tiny" / "data" / "train.jsonl", in_work / "tiny" / "data" / "eval.jsonl"
    for i in range(60):
        d = tmp_path / f"d{i}.jsonl"
        _mutate_data(rng, rng.choice([train, evals]), d)
        key = rng.choice(["data.train_files", "data.eval_files"])
        outcomes[_clean_or_valid(_validate, "tiny_grpo", [f"{key}=[{d}]"])] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 100, outcomes
    # and a few end to end through the CLI: exit 0 or 2, never a traceback
    for i in range(8):
        src = rng.choice(recipes)
        r = tmp_path / f"c{i}_{src.name}"
        r.write_bytes(_mutate_recipe(rng, src.read_text()))
        result = runner.invoke(app, ["config", "validate", str(r)])
        assert result.exit_code in (0, 2) and "Traceback" not in result.output, (result.output, result.exception)
