"""TRL-style batch reward functions (`f(prompts, completions, **columns)`), dataset columns in `meta`, and a
reward model that templates the conversation once (issue 13)."""

from pathlib import Path

import pytest

from creditrl.rewards import REWARDS, RewardConfigError, RewardManager, RewardSample
from creditrl.rewards.custom import BatchCaller, CustomRewardConfig
FNS = str(Path(__file__).with_name("reward_fns.py"))
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+5?"}]


def calls(fn: BatchCaller) -> list[dict]:
    """What the functions of reward_fns.py (loaded by file path, as a recipe loads them) were called with."""
    return fn.fn.__globals__["CALLS"]


def chat_samples():
    rows = [{"prompt": MESSAGES, "solution": "7", "data_source": "toy"},
            {"prompt": MESSAGES, "solution": "8", "data_source": "toy"}]
    return [RewardSample(f"t/{i}", "<templated>", " 7", "7", meta=row, messages=[dict(m) for m in MESSAGES],
                         response_ids=[5, 9, 2]) for i, row in enumerate(rows)]


def test_trl_function_gets_conversations_columns_and_ids():
    fn = REWARDS.build("custom", CustomRewardConfig(f"{FNS}:trl_accuracy"))
    assert isinstance(fn, BatchCaller)
    scores = fn.score_batch(chat_samples())
    # scored by the function: completion " 7" against solution "7" / "8"
    assert [s.score for s in scores] == [1.0, 0.0]
    call = calls(fn).pop()
    assert call["prompts"] == [MESSAGES, MESSAGES]  # the conversation, system turn included, not the templated text
    assert call["completions"] == [[{"role": "assistant", "content": " 7"}]] * 2
    assert call["solution"] == ["7", "8"] and call["data_source"] == ["toy", "toy"]
    assert call["completion_ids"] == [[5, 9, 2], [5, 9, 2]]
    assert "prompt" not in call  # TRL does not pass the prompt column itself either


def test_text_prompts_are_passed_as_text():
    fn = REWARDS.build("custom", CustomRewardConfig(f"{FNS}:trl_accuracy"))
    samples = [RewardSample("t/0", "Q: 2+5=", "7", "7", meta={"prompt": "2+5=", "solution": "7"})]
    assert fn.score_batch(samples)[0].score == 1.0
    call = calls(fn).pop()
    assert call["prompts"] == ["Q: 2+5="] and call["completions"] == ["7"]


def test_only_declared_names_and_none_means_not_applicable():
    fn = REWARDS.build("custom", CustomRewardConfig(f"{FNS}:trl_declared_only"))
    samples = chat_samples()
    samples[1].meta = {**samples[1].meta, "solution": None}
    m = RewardManager([_weighted(fn)], executor="serial", timeout_s=None)
    batch = m.score(samples)
    assert set(calls(fn).pop()) == {"prompts", "completions", "solution"}
    assert batch.scores == [0.5, 0.0]
    assert batch.failures == 0  # None is "does not apply", not a failure
    assert "not applicable" in batch.reasons[1][0]


def _weighted(fn, name="custom"):
    from creditrl.rewards.base import WeightedReward

    return WeightedReward(name, 1.0, fn)


def test_missing_column_is_a_config_error_naming_the_parameter():
    fn = REWARDS.build("custom", CustomRewardConfig(f"{FNS}:trl_needs_missing_column"))
    m = RewardManager([_weighted(fn)], executor="serial", timeout_s=None)
    with pytest.raises(RewardConfigError, match=r"\['difficulty'\].*columns: solution, data_source"):
        m.score(chat_samples())


def test_wrong_length_fails_every_sample_without_crashing():
    fn = REWARDS.build("custom", CustomRewardConfig(f"{FNS}:trl_wrong_length"))
    batch = RewardManager([_weighted(fn)], executor="serial", timeout_s=None).score(chat_samples())
    assert batch.failures == 2 and batch.scores == [0.0, 0.0]
    assert "1 values for 2 samples" in batch.reasons[0][0]


def test_recipe_kwargs_reach_the_function_and_unknown_kwargs_are_rejected():
    fn = REWARDS.build("custom", CustomRewardConfig(f"{FNS}:trl_with_option", {"scale": 2.0}))
    texts = [RewardSample("t/0", "p", "abc", "x"), RewardSample("t/1", "p", "a", "x")]
    assert [r.score for r in fn.score_batch(texts)] == [6.0, 2.0]
    with pytest.raises(RewardConfigError, match="not parameters"):
        REWARDS.build("custom", CustomRewardConfig(f"{FNS}:trl_declared_only", {"nope": 1}))


def test_per_sample_functions_see_every_column_in_meta():
    fn = REWARDS.build("custom", CustomRewardConfig(f"{FNS}:meta_solution"))
    s = chat_samples()
    assert fn(s[0]) == 1.0 and fn(s[1]) == 0.0


def test_reward_model_templates_the_conversation_once(tmp_path):
    from tests.rewards.test_reward_model import make_tiny_rm
    from transformers import AutoTokenizer

    path = make_tiny_rm(tmp_path / "rm")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(path)
    from creditrl.rewards.reward_model import RewardModel, RewardModelConfig

    rm = RewardModel(RewardModelConfig(path=path, use_chat_template=True))
    chat = chat_samples()[0]
    assert rm.text(chat) == "[system]Answer briefly.[user]2+5?[assistant] 7"
    plain = RewardSample("t/1", "the answer is", " one", "x")
    assert rm.text(plain) == "[user]the answer is[assistant] one"
