"""creditrl: reinforcement-learning fine-tuning of LLMs with token-level credit assignment."""

__version__ = "0.1.0"
