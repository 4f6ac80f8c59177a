"""`model.autocast_bf16` null resolves to bf16 only on CPUs with native bf16 matmul and models at least 256 wide."""

import json

import pytest

from creditrl.config.schema import ModelConfig
from creditrl.models import precision


@pytest.fixture
def model_dir(tmp_path):
    def make(hidden: int | None, key: str = "hidden_size"):
        d = tmp_path / f"m{hidden}{key}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({key: hidden} if hidden is not None else {"vocab_size": 9}))
        return str(d)

    precision._auto.cache_clear()
    yield make
    precision._auto.cache_clear()


@pytest.mark.parametrize("native, hidden, key, expected", [
    (True, 128, "hidden_size", False),  # measured slower at this width
    (True, 256, "hidden_size", True),
    (True, 896, "n_embd", True),
    (False, 896, "hidden_size", False),  # emulated bf16 matmul: keep fp32
    (True, None, "hidden_size", False),  # width unknown: keep fp32
])
def test_auto_choice(monkeypatch, model_dir, native, hidden, key, expected):
    monkeypatch.setattr(precision, "cpu_fast_bf16", lambda: native)
    assert precision.use_bf16_autocast(ModelConfig(path=model_dir(hidden, key))) is expected


def test_explicit_setting_wins(monkeypatch, model_dir):
    monkeypatch.setattr(precision, "cpu_fast_bf16", lambda: True)
    path = model_dir(896)
    assert precision.use_bf16_autocast(ModelConfig(path=path, autocast_bf16=False)) is False
    monkeypatch.setattr(precision, "cpu_fast_bf16", lambda: False)
    assert precision.use_bf16_autocast(ModelConfig(path=model_dir(64), autocast_bf16=True)) is True


def test_missing_model_dir_means_fp32(tmp_path):
    precision._auto.cache_clear()
    assert precision.use_bf16_autocast(ModelConfig(path=str(tmp_path / "nowhere"))) is False


def test_sft_resolves_from_the_model_it_trains(monkeypatch, model_dir):
    """SFT trains `sft.init_path`; `model.path` (the RL policy, SFT's output) may not exist yet."""
    from creditrl.config import load_config
    from creditrl.trainer.sft import sft_model_config

    monkeypatch.setattr(precision, "cpu_fast_bf16", lambda: True)
    wide = model_dir(512)
    cfg = load_config("tiny_grpo", [f"sft.init_path={wide}", f"model.path={wide}/not-written-yet"])
    assert precision.use_bf16_autocast(cfg.model) is False  # the unwritten output says nothing
    assert sft_model_config(cfg).path == wide and precision.use_bf16_autocast(sft_model_config(cfg)) is True
