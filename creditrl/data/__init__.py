"""Prompt datasets: local jsonl/parquet loading, templates, splits, the resumable prompt sampler, and the
synthetic arithmetic task used by the demo and the tests."""

from creditrl.data.dataset import DataError, PromptDataset, PromptRow, load_prompt_datasets
from creditrl.data.sampler import PromptSampler

__all__ = ["DataError", "PromptDataset", "PromptRow", "PromptSampler", "load_prompt_datasets"]
