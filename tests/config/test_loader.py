from pathlib import Path

import pytest

from creditrl.config import ConfigError, config_from_dict, dump_yaml, load_config, to_dict


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "r.yaml", "name: x\ntrain:\n  steps: 7\n")
    cfg = load_config(p, ["train.lr=3e-4", "algorithm.policy_loss.clip_high=0.28", "rollout.n_samples=4"])
    assert cfg.train.steps == 7
    assert cfg.train.lr == pytest.approx(3e-4)  # "3e-4" is a YAML string; a float field accepts it
    assert cfg.algorithm.policy_loss.name == "ppo_clip"
    assert cfg.algorithm.policy_loss.options.clip_high == pytest.approx(0.28)
    assert cfg.rollout.n_samples == 4
    assert cfg.train.global_batch_prompts == 16  # default from code


def test_unknown_key_names_key_file_line_and_suggestion(tmp_path):
    p = write(tmp_path, "r.yaml", "name: x\ntrain:\n  stpes: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "train.stpes" in msg and f"{p}:3" in msg and "train.steps" in msg


def test_unknown_override_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithm\.policy_loss\.clip_hgh.*override.*clip_high"):
        load_config(write(tmp_path, "r.yaml", "name: x\n"), ["algorithm.policy_loss.clip_hgh=0.3"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.steps=abc", r"train\.steps.*expected an integer, got 'abc'"),
        ("train.steps=1.5", r"train\.steps.*expected an integer"),
        ("logging.tensorboard=maybe", r"logging\.tensorboard.*true/false"),
        ("rollout.temperature=hot", r"rollout\.temperature.*expected a number"),
        ("algorithm.loss_agg=token-meen", r"unknown loss_agg 'token-meen'"),
        ("algorithm.token_stat_scope=micro", r"token_stat_scope.*one of"),
        ("algorithm.advantage=grpoo", r"unknown advantage estimator 'grpoo'\. Did you mean 'grpo'"),
        ("train.steps=0", r"train\.steps must be >= 1"),
    ],
)
def test_type_and_value_errors(tmp_path, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, "r.yaml", "name: x\n"), [override])


def test_divisibility_error_names_the_fix(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "r.yaml", "name: x\n"), ["train.global_batch_prompts=12", "train.mini_batch_prompts=5"])
    msg = str(e.value)
    assert "12" in msg and "5" in msg and "not divisible" in msg and "e.g. 4" in msg


def test_extends_merges_and_part_switch_replaces(tmp_path):
    write(tmp_path, "base.yaml", "name: base\ntrain: {steps: 5, lr: 0.1}\n"
                                 "algorithm:\n  policy_loss: {name: ppo_clip, clip_high: 0.28}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: child\ntrain: {steps: 9}\n"
                                          "algorithm:\n  policy_loss: {dual_clip: 10.0}\n")
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.train.steps == 9 and cfg.train.lr == pytest.approx(0.1)
    opts = cfg.algorithm.policy_loss.options
    assert opts.clip_high == pytest.approx(0.28) and opts.dual_clip == pytest.approx(10.0)


def test_extends_builtin_recipe_and_cycle(tmp_path):
    child = write(tmp_path, "c.yaml", "extends: tiny_grpo\nname: mine\n")
    assert load_config(child).rollout.max_new_tokens == load_config("tiny_grpo").rollout.max_new_tokens
    a = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(a)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")


def test_roundtrip_through_dict_is_identical():
    cfg = load_config("tiny_grpo", ["algorithm.kl.coef=0.01", "train.mini_batch_prompts=8"])
    again = config_from_dict(to_dict(cfg))
    assert dump_yaml(again) == dump_yaml(cfg)


def test_default_recipe_resolves_short_enough():
    text = dump_yaml(load_config("tiny_grpo"))
    assert len(text.splitlines()) < 150
