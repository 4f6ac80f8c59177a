"""A TRL reward function, unchanged: creditrl calls it once per step with the dataset columns as keyword
arguments (here `solution`), as TRL's GRPOTrainer does."""

import re


def accuracy_reward(prompts, completions, solution, **kwargs):
    """1.0 when the last number of the completion equals the `solution` column, else 0.0."""
    scores = []
    for completion, gold in zip(completions, solution):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        numbers = re.findall(r"-?\d+", text)
        scores.append(1.0 if numbers and numbers[-1] == gold else 0.0)
    return scores
