"""A tiny character-level tokenizer and a tiny Llama model, built locally and saved like any HF model.

Nothing is downloaded: the tokenizer is made with the `tokenizers` library (a character-level WordLevel model)
and wrapped as a `PreTrainedTokenizerFast`; the model is a `LlamaForCausalLM` from a `LlamaConfig` (a Qwen2 config would make
`AutoTokenizer` force its own Qwen2 BPE pre-tokenizer over ours in transformers 5.x). Both are
written with `save_pretrained`, so the trainer loads them with `AutoTokenizer.from_pretrained` /
`AutoModelForCausalLM.from_pretrained` from a local directory: the same code path as a real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
ALPHABET = list("0123456789+-*/=?.,:; ()abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def build_char_tokenizer(alphabet: list[str] = ALPHABET):
    """A character-level fast tokenizer: one token per character, specials <pad> <s> </s> <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + [c for c in alphabet if c not in SPECIAL_TOKENS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@dataclass
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 128

    def config_kwargs(self, vocab_size: int) -> dict:
        """The sizes of a transformers model config (LlamaConfig, Qwen2Config) of this spec."""
        return dict(vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                    num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                    num_key_value_heads=self.num_kv_heads, max_position_embeddings=self.max_position_embeddings)


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec(), seed: int = 0) -> Path:
    """Create tokenizer + randomly initialised Llama model and `save_pretrained` both into `out_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        **spec.config_kwargs(len(tokenizer)),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# A tiny chat model: byte-level BPE tokenizer, ChatML chat template, several end tokens (Qwen2 architecture)
# ---------------------------------------------------------------------------------------------------------
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as Qwen2 instruct models write it (a system turn only when the conversation has one).
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_CORPUS = [
    "You are a helpful assistant. Answer with the number only.",
    "What is 12 + 30? Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72. #### 72",
    "system user assistant tool 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ? . , :",
] * 8


def build_bpe_chat_tokenizer(corpus: list[str] = CHAT_CORPUS, vocab_size: int = 400):
    """A byte-level BPE fast tokenizer trained on `corpus`, with a ChatML chat template.

    Like a Qwen2 base model: `<|endoftext|>` is the tokenizer's EOS and pad token, and the chat turns end with
    `<|im_end|>`, a second end token that only the model's `generation_config.eos_token_id` list declares
    (`build_tiny_chat_model`). Any text encodes (byte-level: no unknown tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_chat_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec(num_layers=2),
                          seed: int = 0, corpus: list[str] = CHAT_CORPUS) -> Path:
    """A Qwen2-architecture causal LM (random init, untied head) with `build_bpe_chat_tokenizer`, saved with
    `save_pretrained`; its generation_config ends generation at `<|im_end|>` or `<|endoftext|>`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bpe_chat_tokenizer(corpus)
    end_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    config = Qwen2Config(
        **{**spec.config_kwargs(len(tokenizer)), "max_position_embeddings": max(spec.max_position_embeddings, 256)},
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = end_ids
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
