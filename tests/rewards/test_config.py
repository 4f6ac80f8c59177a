"""The `reward:` recipe block through the project's config loader: options, defaults, clear errors."""

from pathlib import Path

import pytest

from creditrl.config import load_config
from creditrl.config.loader import ConfigError, build_dataclass
from creditrl.rewards import RewardConfig
from creditrl.rewards.code import CodeTestsConfig
from creditrl.rewards.custom import CustomRewardConfig
from creditrl.rewards.math_answer import MathAnswerConfig

FNS = str(Path(__file__).with_name("reward_fns.py"))


def test_defaults():
    cfg = RewardConfig()
    assert [s.name for s in cfg.fns] == ["numeric_answer"]
    assert (cfg.executor, cfg.workers, cfg.timeout_s) == ("process", 2, 60.0)


def test_yaml_block_with_options_and_weights():
    cfg = build_dataclass(RewardConfig, {
        "fns": [
            {"name": "math_answer", "weight": 1.0, "extract": ["boxed"], "no_answer_score": -1},
            {"name": "code_tests", "weight": 0.5, "scoring": "all_or_nothing", "limits": {"wall_s": 3}},
            {"name": "overlong_penalty", "max_len": 512, "buffer_len": 128},
            {"name": "custom", "function": f"{FNS}:const", "kwargs": {"value": 0.3}},
        ],
        "executor": "serial", "timeout_s": None,
    })
    math, code, overlong, custom = cfg.fns
    assert math.options == MathAnswerConfig(extract=["boxed"], no_answer_score=-1.0)
    assert code.weight == 0.5 and isinstance(code.options, CodeTestsConfig)
    assert code.options.scoring == "all_or_nothing" and code.options.limits.wall_s == 3.0
    assert (overlong.weight, overlong.options.max_len, overlong.options.buffer_len) == (1.0, 512, 128)
    assert custom.options == CustomRewardConfig(f"{FNS}:const", {"value": 0.3})
    assert cfg.executor == "serial" and cfg.timeout_s is None


@pytest.mark.parametrize("block, message", [
    ({"fns": [{"name": "math_answr"}]}, "Did you mean 'math_answer'"),
    ({"fns": [{"name": "math_answer", "extrct": ["boxed"]}]}, "unknown config key 'fns\\[0\\].extrct'"),
    ({"fns": [{"name": "math_answer", "extract": ["box"]}]}, "unknown answer extraction strategy"),
    ({"fns": [{"name": "overlong_penalty", "max_len": 10, "buffer_len": 20}]}, "buffer_len <= max_len"),
    ({"executor": "threads"}, "expected one of 'serial', 'process', 'ray'"),
    ({"workers": 0}, "workers must be >= 1"),
    ({"fns": []}, "reward.fns is empty"),
])
def test_errors_name_the_problem(block, message):
    with pytest.raises(ConfigError, match=message):
        build_dataclass(RewardConfig, block)


def test_tiny_math_format_recipe_loads():
    cfg = load_config("tiny_math_format")
    assert [(s.name, s.weight) for s in cfg.reward.fns] == [("math_answer", 1.0), ("format_regex", 0.2)]
    assert cfg.reward.executor == "process" and cfg.reward.workers == 2
    assert cfg.rollout.n_samples == 8  # inherited from tiny_grpo
