"""reward_model: a tiny local sequence-classification model (built here, nothing downloaded), batched scoring."""

import pytest
import torch

from creditrl.registry import PartSpec
from creditrl.rewards import REWARDS, RewardConfig, RewardConfigError, RewardManager, RewardSample
from creditrl.rewards.reward_model import RewardModelConfig

WORDS = "the answer is one two three four five six seven eight nine good bad very".split()


def make_tiny_rm(path, num_labels: int = 1, seed: int = 0) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      num_labels=num_labels, pad_token_id=0)
    model = LlamaForSequenceClassification(cfg)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # visible differences between texts
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return make_tiny_rm(tmp_path_factory.mktemp("rm1"))


@pytest.fixture(scope="module")
def rm2_dir(tmp_path_factory):
    return make_tiny_rm(tmp_path_factory.mktemp("rm2"), num_labels=2, seed=1)


RESPONSES = [" one", " two three four", " very good", " bad bad bad bad bad", ""]


def _samples():
    return [RewardSample(f"t/{i}", "the answer is", r, "x") for i, r in enumerate(RESPONSES)]


def reference_logits(path: str, texts: list[str]) -> torch.Tensor:
    """One unpadded forward per text: no batching, no padding, no truncation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")
            rows.append(model(**ids).logits[0].double())
    return torch.stack(rows)  # [B, num_labels]


def test_batched_scores_match_unpadded_reference(rm_dir):
    fn = REWARDS.build("reward_model", RewardModelConfig(path=rm_dir, batch_size=2, device="cpu"))
    got = torch.tensor(fn.score_batch(_samples()), dtype=torch.float64)
    ref = reference_logits(rm_dir, ["the answer is" + r for r in RESPONSES])[:, 0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert got.std() > 1e-3  # the texts really get different scores
    assert fn(_samples()[2]) == pytest.approx(float(ref[2]), abs=1e-5)  # single-sample call


def test_label_and_sigmoid(rm2_dir):
    fn = REWARDS.build("reward_model", RewardModelConfig(path=rm2_dir, label=1, transform="sigmoid"))
    got = torch.tensor(fn.score_batch(_samples()), dtype=torch.float64)
    ref = torch.sigmoid(reference_logits(rm2_dir, ["the answer is" + r for r in RESPONSES])[:, 1])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(RewardConfigError, match="label 2 is out of range"):
        REWARDS.build("reward_model", RewardModelConfig(path=rm2_dir, label=2))


def test_left_truncation_keeps_the_end_of_the_response(rm_dir):
    fn = REWARDS.build("reward_model", RewardModelConfig(path=rm_dir, max_length=3, template="{response}"))
    sample = RewardSample("t/0", "", "one two three four five", "")
    ref = reference_logits(rm_dir, ["three four five"])[0, 0]
    assert fn(sample) == pytest.approx(float(ref), abs=1e-5)


def test_template_uses_fields(rm_dir):
    fn = REWARDS.build("reward_model", RewardModelConfig(path=rm_dir, template="{answer} {response}"))
    sample = RewardSample("t/0", "ignored prompt", "good", "very")
    assert fn(sample) == pytest.approx(float(reference_logits(rm_dir, ["very good"])[0, 0]), abs=1e-5)


def test_in_a_manager_next_to_per_sample_rewards(rm_dir):
    cfg = RewardConfig(fns=[PartSpec("reward_model", RewardModelConfig(path=rm_dir), 0.5),
                            PartSpec("numeric_answer", None, 1.0)], executor="process", workers=1)
    with RewardManager.from_config(cfg) as m:
        batch = m.score(_samples())
    ref = reference_logits(rm_dir, ["the answer is" + r for r in RESPONSES])[:, 0]
    torch.testing.assert_close(torch.tensor(batch.components["reward_model"], dtype=torch.float64), ref,
                               rtol=1e-5, atol=1e-5)
    assert batch.scores == pytest.approx([0.5 * float(v) for v in ref], abs=1e-5)  # no numbers: numeric is 0


def test_missing_directory_is_a_start_up_error(tmp_path):
    with pytest.raises(RewardConfigError, match="not a local model directory"):
        REWARDS.build("reward_model", RewardModelConfig(path=str(tmp_path / "nope")))


@pytest.mark.gpu
def test_on_gpu(rm_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = REWARDS.build("reward_model", RewardModelConfig(path=rm_dir, device="cpu"))
    gpu = REWARDS.build("reward_model", RewardModelConfig(path=rm_dir, device="cuda"))
    assert gpu.score_batch(_samples()) == pytest.approx(cpu.score_batch(_samples()), abs=1e-4)
