"""Typed recipe configuration: schema (`schema.py`) and YAML loading with overrides (`loader.py`)."""

from __future__ import annotations

from pathlib import Path

from creditrl.config.loader import ConfigError, build_dataclass, dump_yaml, load_recipe_dict, to_dict
from creditrl.config.schema import RecipeConfig


def load_config(recipe: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Load a recipe YAML (following `extends:`), apply `key.sub=value` overrides, validate, return it."""
    from creditrl.config.loader import apply_override

    origins: dict[str, str] = {}
    data = load_recipe_dict(recipe, origins)
    for ov in overrides or []:
        apply_override(data, ov, origins)
    return build_dataclass(RecipeConfig, data, origins)


def config_from_dict(data: dict) -> RecipeConfig:
    """Rebuild a config from its `to_dict` form (e.g. the copy saved in a checkpoint)."""
    return build_dataclass(RecipeConfig, data)


__all__ = ["ConfigError", "RecipeConfig", "config_from_dict", "dump_yaml", "load_config", "to_dict"]
