"""Prompt datasets: local jsonl/json/parquet/csv files and save_to_disk folders, text or message-list prompts
(TRL conversational, verl), templates and the system prompt, dotted field paths, GSM8K answers, splits, the
resumable prompt sampler, and the synthetic arithmetic task used by the demo and the tests (docs/data.md)."""

from creditrl.data.dataset import DataError, PromptDataset, PromptRow, load_prompt_datasets
from creditrl.data.sampler import PromptSampler

__all__ = ["DataError", "PromptDataset", "PromptRow", "PromptSampler", "load_prompt_datasets"]
