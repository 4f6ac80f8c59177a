"""Data formats as TRL and verl users have them (issue 13): message-list prompts, the system prompt, dotted field
paths, GSM8K answers, csv and save_to_disk sources, batched tokenization, and the preflight checks of all that."""

import json
import logging

import pytest

from creditrl.config.schema import DataConfig
from creditrl.data import DataError, load_prompt_datasets
from creditrl.data.answers import answer_to_text, extract_answer
from creditrl.data.dataset import load_rows
from creditrl.models.tiny import build_char_tokenizer
from creditrl.preflight import check_data_files

CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def chat_tok():
    tok = build_char_tokenizer()
    tok.chat_template = CHAT
    return tok


@pytest.fixture(scope="module")
def plain_tok():
    return build_char_tokenizer()


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def verl_rows():
    return [
        {"data_source": "openai/gsm8k",
         "prompt": [{"role": "user", "content": "1+1="}],
         "ability": "math",
         "reward_model": {"ground_truth": "2", "style": "rule"},
         "extra_info": {"index": 0, "split": "train"}},
        {"data_source": "openai/gsm8k",
         "prompt": [{"role": "system", "content": "own"}, {"role": "user", "content": "2+3="}],
         "ability": "math",
         "reward_model": {"ground_truth": "5", "style": "rule"},
         "extra_info": {"index": 1, "split": "train"}},
    ]


def verl_parquet(tmp_path, rows=None, name="verl.parquet"):
    import pandas as pd

    p = tmp_path / name
    pd.DataFrame(rows or verl_rows()).to_parquet(p)
    return str(p)


def cfg(files, **kw):
    return DataConfig(train_files=files, eval_files=kw.pop("eval_files", list(files)), **kw)


# ---------------------------------------------------------------------------------------------------------
# message-list prompts, the system prompt, dotted paths (verl parquet, TRL conversational jsonl)
# ---------------------------------------------------------------------------------------------------------
def test_verl_parquet_with_system_prompt_and_ground_truth(tmp_path, chat_tok):
    f = verl_parquet(tmp_path)
    train, _ = load_prompt_datasets(cfg([f], answer_field="reward_model.ground_truth", system_prompt="sys"),
                                    chat_tok, seed=0)
    r0, r1 = train[0], train[1]
    assert r0.prompt == "<system>sys<user>1+1=<assistant>"
    assert r1.prompt == "<system>own<user>2+3=<assistant>"  # the row's own system turn wins
    assert (r0.answer, r1.answer) == ("2", "5")
    assert r0.key == "verl.parquet:0" and r1.key == "verl.parquet:1"
    assert r0.messages == ({"role": "system", "content": "sys"}, {"role": "user", "content": "1+1="})
    assert r1.messages == ({"role": "system", "content": "own"}, {"role": "user", "content": "2+3="})
    assert all(type(m) is dict for m in r0.messages)
    # every column reaches the rewards, nested values as they are
    assert r0.fields == verl_rows()[0]
    assert r1.fields["reward_model"] == {"ground_truth": "5", "style": "rule"}
    assert r1.fields["extra_info"]["index"] == 1 and r1.fields["data_source"] == "openai/gsm8k"
    assert chat_tok.decode(list(r0.prompt_ids)) == chat_tok.decode(chat_tok(r0.prompt)["input_ids"])


def test_trl_conversational_jsonl_auto_and_chat(tmp_path, chat_tok):
    rows = [{"prompt": [{"role": "user", "content": f"{i}+1="}], "solution": str(i + 1)} for i in range(4)]
    rows[1]["prompt"] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "1+1="}]
    f = jsonl(tmp_path / "conv.jsonl", rows)
    for template in ("auto", "chat"):
        out = load_rows([f], "prompt", "solution", template, chat_tok, 100)
        assert out[0].prompt == "<user>0+1=<assistant>" and out[0].answer == "1"
        assert out[1].prompt == "<user>hi<assistant>hello<user>1+1=<assistant>"
        assert out[1].messages == tuple(rows[1]["prompt"])
        assert out[0].fields == rows[0]


def test_text_prompts_auto_chat_and_format(tmp_path, chat_tok):
    f = jsonl(tmp_path / "t.jsonl", [{"prompt": "3+1=", "answer": "4"}])
    auto = load_rows([f], "prompt", "answer", "auto", chat_tok, 100)[0]
    assert auto.prompt == "3+1=" and auto.messages is None
    sys = load_rows([f], "prompt", "answer", "auto", chat_tok, 100, system_prompt="be brief")[0]
    assert sys.prompt == "<system>be brief<user>3+1=<assistant>"
    assert sys.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "3+1="})
    chat = load_rows([f], "prompt", "answer", "chat", chat_tok, 100)[0]
    assert chat.prompt == "<user>3+1=<assistant>" and chat.messages == ({"role": "user", "content": "3+1="},)
    fmt = load_rows([f], "prompt", "answer", "Q: {prompt} A:", chat_tok, 100)[0]
    assert fmt.prompt == "Q: 3+1= A:" and fmt.messages is None


def test_message_list_with_format_template_is_an_error(tmp_path, chat_tok):
    f = jsonl(tmp_path / "conv.jsonl", [{"prompt": [{"role": "user", "content": "1+1="}], "answer": "2"}])
    with pytest.raises(DataError, match=r"conv\.jsonl, row 0: field 'prompt' \(data\.prompt_field\) is a list of "
                                        r"messages.*format string.*Fix: data\.template: auto"):
        load_rows([f], "prompt", "answer", "Q: {prompt}", chat_tok, 100)


@pytest.mark.parametrize("messages, pattern", [
    ([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}],
     r"last message is an assistant turn.*already complete.*Fix: end the prompt with a user"),
    ([{"role": "robot", "content": "1+1="}], r"message 0 has role 'robot'; roles are system, user, assistant"),
    ([{"role": "user", "content": 5}], r"message 0 \(user\) has content of type int; content must be text"),
    ([{"role": "user"}], r"message 0 \(user\) has no content"),
    (["1+1="], r"message 0 is a str, not a \{role, content\} dict"),
    ([], r"empty list of messages"),
])
def test_bad_messages_name_file_row_field_and_fix(tmp_path, chat_tok, messages, pattern):
    f = jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "user", "content": "ok"}], "answer": "1"},
                                       {"prompt": messages, "answer": "2"}])
    with pytest.raises(DataError, match=r"bad\.jsonl, row 1: field 'prompt' \(data\.prompt_field\)") as e:
        load_rows([f], "prompt", "answer", "auto", chat_tok, 100)
    assert e.match(pattern)
    assert "Fix" in str(e.value)


def test_no_chat_template_names_the_tokenizer(tmp_path, plain_tok):
    f = jsonl(tmp_path / "conv.jsonl", [{"prompt": [{"role": "user", "content": "1+1="}], "answer": "2"}])
    with pytest.raises(DataError, match=r"conv\.jsonl, row 0: field 'prompt'.*has no chat template\. Fix"):
        load_rows([f], "prompt", "answer", "auto", plain_tok, 100)
    t = jsonl(tmp_path / "t.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    with pytest.raises(DataError, match=r"data\.system_prompt.*no chat template"):
        load_rows([t], "prompt", "answer", "auto", plain_tok, 100, system_prompt="sys")
    # text prompts without a system prompt need no chat template
    assert load_rows([t], "prompt", "answer", "auto", plain_tok, 100)[0].prompt == "1+1="


def test_dotted_paths_and_their_errors(tmp_path, chat_tok):
    rows = [{"q": {"text": f"{i}+1="}, "extra_info": {"answer": i + 1, "split": "train"}} for i in range(3)]
    f = jsonl(tmp_path / "n.jsonl", rows)
    out = load_rows([f], "q.text", "extra_info.answer", "auto", chat_tok, 100)
    assert [r.prompt for r in out] == ["0+1=", "1+1=", "2+1="] and [r.answer for r in out] == ["1", "2", "3"]
    assert out[2].fields == rows[2]
    with pytest.raises(DataError, match=r"n\.jsonl: field 'extra_info\.gold' \(data\.answer_field\) does not exist: "
                                        r"'extra_info' has no key 'gold'; its keys are: answer, split"):
        load_rows([f], "q.text", "extra_info.gold", "auto", chat_tok, 100)
    with pytest.raises(DataError, match=r"n\.jsonl has no field 'info\.answer' \(data\.answer_field\).*fields are: "
                                        r"q, extra_info"):
        load_rows([f], "q.text", "info.answer", "auto", chat_tok, 100)
    with pytest.raises(DataError, match=r"n\.jsonl, row 0: field 'q' \(data\.prompt_field\) is a dict \(keys: text\)"
                                        r".*data\.prompt_field: q\.text"):
        load_rows([f], "q", "extra_info.answer", "auto", chat_tok, 100)
    p = verl_parquet(tmp_path)
    with pytest.raises(DataError, match=r"'reward_model' has no key 'answer'; its keys are: ground_truth, style"):
        load_rows([p], "prompt", "reward_model.answer", "auto", chat_tok, 100)
    # a nested value missing in one row (jsonl rows with different keys): that row is named
    g = jsonl(tmp_path / "m.jsonl", [{"p": "1+1=", "x": {"a": "2"}}, {"p": "2+2=", "x": {"b": "4"}}])
    with pytest.raises(DataError, match=r"m\.jsonl, row 1: field 'x\.a' \(data\.answer_field\) (is null|does not "
                                        r"exist: no key 'a' \('x' has the keys: b\))"):
        load_rows([g], "p", "x.a", "auto", chat_tok, 100)


# ---------------------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------------------
def test_gsm8k_answers(tmp_path, chat_tok):
    sol = "She sells 1,000 + 234 = <<1000+234=1234>>1,234 eggs.\n#### 1,234"
    rows = [{"question": "how many?", "answer": sol}, {"question": "and now?", "answer": "72"}]
    f = jsonl(tmp_path / "gsm8k.jsonl", rows)
    auto = load_rows([f], "question", "answer", "auto", chat_tok, 100)
    assert [r.answer for r in auto] == ["1234", "72"]
    assert auto[0].fields["answer"] == sol  # the raw solution stays available to rewards (and SFT)
    raw = load_rows([f], "question", "answer", "auto", chat_tok, 100, answer_format="raw")
    assert raw[0].answer == sol
    with pytest.raises(DataError, match=r"gsm8k\.jsonl, row 1: field 'answer' \(data\.answer_field\) has no '####' "
                                        r"line.*Fix: data\.answer_format: raw"):
        load_rows([f], "question", "answer", "auto", chat_tok, 100, answer_format="gsm8k")
    assert extract_answer("x\n#### -3,000.5 ", "gsm8k", "w", "f") == "-3000.5"
    assert extract_answer("a #### 1 \n#### 2", "auto", "w", "f") == "2"
    with pytest.raises(DataError, match=r"w: f has nothing after its last '####'"):
        extract_answer("x ####  ", "auto", "w", "f")


def test_non_string_answers_become_text(tmp_path, chat_tok):
    import pandas as pd

    assert [answer_to_text(v) for v in (42, 3.0, 0.5, -2.0, True, ["7"], [1, 2], {"a": 1}, "x")] == \
        ["42", "3", "0.5", "-2", "true", "7", "[1,2]", '{"a":1}', "x"]
    p = tmp_path / "nums.parquet"
    pd.DataFrame({"prompt": ["a", "b", "c"], "i": [42, 7, 1], "f": [3.0, 2.5, 1.0],
                  "l": [["9"], ["1", "2"], ["3"]]}).to_parquet(p)
    out = {col: [r.answer for r in load_rows([str(p)], "prompt", col, "auto", chat_tok, 100)] for col in "ifl"}
    assert out == {"i": ["42", "7", "1"], "f": ["3", "2.5", "1"], "l": ["9", '["1","2"]', "3"]}


# ---------------------------------------------------------------------------------------------------------
# sources: csv, save_to_disk folders and DatasetDict splits
# ---------------------------------------------------------------------------------------------------------
def test_csv(tmp_path, chat_tok):
    p = tmp_path / "d.csv"
    p.write_text('prompt,answer,note\n1+1=,2,x\n"2,2",4,y\n')
    out = load_rows([str(p)], "prompt", "answer", "{prompt}", chat_tok, 100)
    assert [(r.key, r.prompt, r.answer) for r in out] == [("d.csv:0", "1+1=", "2"), ("d.csv:1", "2,2", "4")]
    assert out[1].fields == {"prompt": "2,2", "answer": 4, "note": "y"}
    head = tmp_path / "head.csv"
    head.write_text("prompt,answer\n")
    with pytest.raises(DataError, match=r"head\.csv is empty"):
        load_rows([str(head)], "prompt", "answer", "auto", chat_tok, 100)


def test_save_to_disk_folders_and_splits(tmp_path, chat_tok):
    from datasets import Dataset, DatasetDict

    def ds(tag, n):
        return Dataset.from_list([{"prompt": f"{tag}{i}=", "answer": str(i)} for i in range(n)])

    ds("a", 3).save_to_disk(str(tmp_path / "one"))
    DatasetDict({"train": ds("t", 4), "test": ds("e", 2)}).save_to_disk(str(tmp_path / "dd"))
    DatasetDict({"train": ds("t", 4), "validation": ds("v", 2)}).save_to_disk(str(tmp_path / "dv"))
    DatasetDict({"first": ds("f", 2), "second": ds("s", 2)}).save_to_disk(str(tmp_path / "odd"))

    one = load_rows([str(tmp_path / "one")], "prompt", "answer", "auto", chat_tok, 100)
    assert [(r.key, r.prompt) for r in one] == [("one:0", "a0="), ("one:1", "a1="), ("one:2", "a2=")]
    train, ev = load_prompt_datasets(cfg([str(tmp_path / "dd")]), chat_tok, 0)
    assert [r.prompt for r in train] == ["t0=", "t1=", "t2=", "t3="] and train[0].key == "dd/train:0"
    assert [r.prompt for r in ev] == ["e0=", "e1="] and ev[1].key == "dd/test:1"
    _, ev = load_prompt_datasets(cfg([str(tmp_path / "dv")]), chat_tok, 0)
    assert [r.prompt for r in ev] == ["v0=", "v1="]
    explicit = load_rows([f"{tmp_path / 'odd'}:second"], "prompt", "answer", "auto", chat_tok, 100)
    assert [r.prompt for r in explicit] == ["s0=", "s1="] and explicit[0].key == "odd/second:0"
    with pytest.raises(DataError, match=r"odd \(data\.train_files\) is a DatasetDict with the splits first, second, "
                                        r"none of which is 'train'\. Fix: name the split, e\.g\. .*odd:first"):
        load_rows([str(tmp_path / "odd")], "prompt", "answer", "auto", chat_tok, 100)
    with pytest.raises(DataError, match=r"dd has no split 'nope'.*its splits are: train, test"):
        load_rows([f"{tmp_path / 'dd'}:nope"], "prompt", "answer", "auto", chat_tok, 100)
    with pytest.raises(DataError, match=r"one holds one Dataset \(no splits\).*Fix: drop ':train'"):
        load_rows([f"{tmp_path / 'one'}:train"], "prompt", "answer", "auto", chat_tok, 100)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain is not a file nor a folder written by Dataset\.save_to_disk"):
        load_rows([str(tmp_path / "plain")], "prompt", "answer", "auto", chat_tok, 100)
    with pytest.raises(DataError, match=r"data file not found: .*nope:train"):  # the folder must exist for ':split'
        load_rows([str(tmp_path / "nope:train")], "prompt", "answer", "auto", chat_tok, 100)
    bad = tmp_path / "d.txt"
    bad.write_text("x")
    with pytest.raises(DataError, match=r"d\.txt: unsupported format '\.txt'.*\.csv"):
        load_rows([str(bad)], "prompt", "answer", "auto", chat_tok, 100)


# ---------------------------------------------------------------------------------------------------------
# batched tokenization, drops, keys, config
# ---------------------------------------------------------------------------------------------------------
def test_batched_map_keeps_row_errors_drops_and_keys(tmp_path, chat_tok, monkeypatch, caplog):
    import creditrl.data.dataset as dataset

    monkeypatch.setattr(dataset, "MAP_BATCH_SIZE", 3)
    rows = [{"prompt": f"{i}+1=" + "9" * (i % 4 == 0) * 20, "answer": str(i + 1)} for i in range(10)]
    f = jsonl(tmp_path / "b.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="creditrl.data.dataset"):
        out = load_rows([f], "prompt", "answer", "{prompt}", chat_tok, 10)
    assert [r.key for r in out] == [f"b.jsonl:{i}" for i in range(10) if i % 4]
    assert all(chat_tok.decode(list(r.prompt_ids)) == r.prompt for r in out)
    assert [r.answer for r in out] == [str(i + 1) for i in range(10) if i % 4]
    assert "dropped 3 prompts longer than data.max_prompt_tokens=10" in caplog.text
    rows[7]["prompt"] = " "
    f = jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(DataError, match=r"b\.jsonl, row 7: field 'prompt' \(data\.prompt_field\) is empty"):
        load_rows([f], "prompt", "answer", "{prompt}", chat_tok, 100)


def test_tiny_task_loads_as_before(tmp_path, plain_tok):
    from creditrl.data.synthetic import ArithmeticSpec, write_arithmetic_task

    d = write_arithmetic_task(tmp_path, ArithmeticSpec(n_train=40, n_eval=10), seed=0)
    raw = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
    for template in ("auto", "{prompt}"):
        train, ev = load_prompt_datasets(cfg([str(d / "train.jsonl")], eval_files=[str(d / "eval.jsonl")],
                                             template=template), plain_tok, 0)
        assert len(train) == 40 and len(ev) == 10
        assert [(r.key, r.prompt, r.answer, r.fields, r.messages) for r in train] == \
            [(f"train.jsonl:{i}", x["prompt"], x["answer"], x, None) for i, x in enumerate(raw)]


def test_data_config_keys():
    d = DataConfig()
    assert (d.template, d.system_prompt, d.answer_format) == ("auto", None, "auto")
    assert DataConfig(template="chat", system_prompt="s").system_prompt == "s"
    with pytest.raises(ValueError, match=r"data\.system_prompt is set, but data\.template='Q: \{prompt\}' is a format "
                                         r"string.*Fix: put the text in the template"):
        DataConfig(template="Q: {prompt}", system_prompt="be brief")
    with pytest.raises(ValueError, match=r"data\.answer_format='boxed'"):
        DataConfig(answer_format="boxed")
    with pytest.raises(ValueError, match=r"data\.system_prompt is empty"):
        DataConfig(system_prompt=" ")


def test_sft_target_reads_dotted_paths_and_completions():
    from creditrl.data import PromptRow
    from creditrl.trainer.sft import sft_target

    row = PromptRow("f:0", "p", "1234", (1,), {"answer": "work\n#### 1,234", "x": {"y": 5},
                                                "completion": [{"role": "assistant", "content": "42"}]})
    assert sft_target(row, None) == "1234"
    assert sft_target(row, "answer") == "work\n#### 1,234"
    assert sft_target(row, "x.y") == "5"
    assert sft_target(row, "completion") == "42"
    with pytest.raises(DataError, match=r"sft\.answer_field 'x\.z'.*f:0"):
        sft_target(row, "x.z")


# ---------------------------------------------------------------------------------------------------------
# preflight
# ---------------------------------------------------------------------------------------------------------
def _check(files, template="auto", prompt_field="prompt", answer_field="answer", key="data.train_files", **kw):
    fields = {prompt_field: "data.prompt_field", answer_field: "data.answer_field"}
    return check_data_files(files, key, fields, template, {}, prompt_field, answer_field=answer_field, **kw)


def test_preflight_accepts_the_new_formats(tmp_path):
    from datasets import Dataset, DatasetDict

    assert _check([verl_parquet(tmp_path)], answer_field="reward_model.ground_truth") == 2
    p = tmp_path / "d.csv"
    p.write_text("prompt,answer\n1+1=,2\n2+2=,4\n3+3=,6\n")
    assert _check([str(p)]) == 3
    DatasetDict({"train": Dataset.from_list([{"prompt": "1+1=", "answer": "2"}]),
                 "test": Dataset.from_list([{"prompt": "2+2=", "answer": "4"}] * 2)}).save_to_disk(str(tmp_path / "dd"))
    assert _check([str(tmp_path / "dd")]) == 1
    assert _check([str(tmp_path / "dd")], key="data.eval_files") == 2
    assert _check([f"{tmp_path / 'dd'}:test"]) == 2
    g = jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "answer": "x\n#### 3"}])
    assert _check([g], answer_format="gsm8k") == 1


def test_preflight_errors_name_file_row_field_and_fix(tmp_path):
    f = verl_parquet(tmp_path)
    with pytest.raises(DataError, match=r"data\.train_files\[0\]=.*verl\.parquet.*row 0: field 'prompt' "
                                        r"\(data\.prompt_field\) is a list of messages, but data\.template='\{prompt\}'"
                                        r".*Fix: data\.template: auto"):
        _check([f], template="{prompt}", answer_field="reward_model.ground_truth")
    with pytest.raises(DataError, match=r"verl\.parquet row 0: field 'prompt' .*tokenizer of m/tiny has no chat "
                                        r"template"):
        _check([f], answer_field="reward_model.ground_truth", no_chat_template="m/tiny")
    with pytest.raises(DataError, match=r"verl\.parquet row 0: no field 'reward_model\.answer' \(data\.answer_field\): "
                                        r"no key 'answer' \('reward_model' has the keys: ground_truth, style\)"):
        _check([f], answer_field="reward_model.answer")
    bad = jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "user", "content": "a"},
                                                     {"role": "assistant", "content": "b"}], "answer": "1"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'prompt' \(data\.prompt_field\): the last message is an "
                                        r"assistant turn.*Fix"):
        _check([bad])
    g = jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "answer": "x\n#### 3"}, {"prompt": "q", "answer": "3"}])
    with pytest.raises(DataError, match=r"g\.jsonl:2: field 'answer' \(data\.answer_field\) has no '####' line"):
        _check([g], answer_format="gsm8k")
    c = tmp_path / "c.csv"
    c.write_text("prompt,answer\n1+1=,2\n,4\n")
    with pytest.raises(DataError, match=r"c\.csv row 1 \(line 3\): field 'prompt' \(data\.prompt_field\) is null"):
        _check([str(c)])
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"data\.train_files\[0\]=.*plain.*not a file nor a folder written by"):
        _check([str(tmp_path / "plain")])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny model without a chat template (plain) and a copy whose tokenizer has one (chat)."""
    from transformers import AutoTokenizer

    from creditrl.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    plain = build_tiny_model(root / "plain", seed=0)
    chat = build_tiny_model(root / "chat", seed=0)
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = CHAT
    tok.save_pretrained(chat)
    return plain, chat


def test_check_recipe_with_verl_data_and_system_prompt(tmp_path, models):
    from creditrl.config import load_config
    from creditrl.models.build import ModelLoadError
    from creditrl.preflight import check_recipe

    plain, chat = models
    f = verl_parquet(tmp_path)

    def validate(model, *extra):
        origins: dict[str, str] = {}
        cfg = load_config("tiny_grpo", [f"model.path={model}", f"data.train_files=[{f}]", f"data.eval_files=[{f}]",
                                        "data.answer_field=reward_model.ground_truth", f"output_dir={tmp_path}/run",
                                        *extra], origins)
        check_recipe(cfg, origins, "train")

    validate(chat, "data.template=auto", "data.system_prompt='be brief'")
    with pytest.raises(DataError, match=r"data\.train_files\[0\]=.*verl\.parquet row 0: field 'prompt' "
                                        r"\(data\.prompt_field\) is a list of messages, but data\.template='\{prompt\}'"):
        validate(chat, 'data.template="{prompt}"')
    with pytest.raises(DataError, match=rf"is a list of messages, but the tokenizer of {plain} has no chat template"):
        validate(plain, "data.template=auto")
    with pytest.raises(ModelLoadError, match=r"data\.system_prompt .*\(override.*needs a chat template, but the "
                                             rf"tokenizer in {plain} has none"):
        validate(plain, "data.template=auto", "data.system_prompt='be brief'")
