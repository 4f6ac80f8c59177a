"""User-defined rewards: loading by file path or module, signature checks at start-up, return types."""

import sys
from pathlib import Path

import pytest

from creditrl.rewards import REWARDS, RewardConfigError, RewardResult, RewardSample
from creditrl.rewards.custom import CustomRewardConfig

FNS = str(Path(__file__).with_name("reward_fns.py"))
SAMPLE = RewardSample("t/0", "2+2=", "4", "4")


def build(function: str, **kwargs):
    return REWARDS.build("custom", CustomRewardConfig(function, kwargs))


def test_file_function_with_sample_and_kwargs():
    assert build(f"{FNS}:const", value=0.75)(SAMPLE) == 0.75


def test_field_named_parameters_and_dict_result():
    assert build(f"{FNS}:with_reason")(SAMPLE) == RewardResult(1.0, "")
    wrong = build(f"{FNS}:with_reason")(RewardSample("t/1", "q", "5", "4"))
    assert wrong == RewardResult(0.0, "mismatch")


def test_module_path_function(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(FNS).parent))
    sys.modules.pop("reward_fns", None)
    assert build("reward_fns:length")(SAMPLE) == 1.0


def test_relative_file_path_is_made_absolute(monkeypatch):
    monkeypatch.chdir(Path(FNS).parent)
    cfg = CustomRewardConfig("reward_fns.py:const")
    assert cfg.function == f"{FNS}:const"


@pytest.mark.parametrize("function, kwargs, message", [
    ("no_colon_here", {}, "must look like"),
    (f"{FNS}:missing_fn", {}, "has no attribute 'missing_fn'. Callables there: .*const"),
    (f"{FNS}:NOT_CALLABLE", {}, "not a function"),
    (f"{FNS}:coroutine", {}, "async functions are not supported"),
    (f"{FNS}:needs_unknown", {}, r"parameters \['threshold'\] have no value"),
    (f"{FNS}:bad_name", {}, r"parameter\(s\) \['text'\] can not be filled"),
    (f"{FNS}:const", {"valeu": 1}, r"kwargs \['valeu'\] are not parameters"),
    ("/nonexistent/rewards.py:f", {}, "does not exist"),
    ("creditrl_no_such_module:f", {}, "importing module creditrl_no_such_module failed"),
])
def test_start_up_errors_are_clear(function, kwargs, message):
    with pytest.raises(RewardConfigError, match=message):
        build(function, **kwargs)


def test_import_error_in_user_file_names_the_file(tmp_path):
    bad = tmp_path / "broken_reward.py"
    bad.write_text("import numpyy\ndef f(sample):\n    return 1.0\n")
    with pytest.raises(RewardConfigError, match="importing .*broken_reward.py failed: ModuleNotFoundError"):
        build(f"{bad}:f")


def test_function_is_required():
    with pytest.raises(ValueError, match="set function"):
        CustomRewardConfig()
