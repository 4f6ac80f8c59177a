"""Typed recipe configuration: schema (`schema.py`) and YAML loading with overrides (`loader.py`)."""

from __future__ import annotations

from pathlib import Path

from creditrl.config.loader import ConfigError, build_dataclass, dump_yaml, load_recipe_dict, to_dict
from creditrl.config.schema import RecipeConfig


def load_config(recipe: str | Path, overrides: list[str] | None = None,
                origins: dict[str, str] | None = None) -> RecipeConfig:
    """Load a recipe YAML (following `extends:`), apply `key.sub=value` overrides, validate, return it.

    `origins`, when given, is filled with where every key was set (dotted key -> "file:line" or the override),
    for later checks that want to name it (creditrl/preflight.py)."""
    from creditrl.config.loader import apply_override, resolve_recipe_path

    origins = {} if origins is None else origins
    data = load_recipe_dict(recipe, origins)
    for ov in overrides or []:
        apply_override(data, ov, origins)
    try:
        return build_dataclass(RecipeConfig, data, origins)
    except ConfigError as e:
        path = str(resolve_recipe_path(recipe))
        msg = str(e)
        if path in msg or "override '" in msg or ".yaml:" in msg or ".yml:" in msg:
            raise
        raise ConfigError(f"{msg} (recipe {path})") from None


def config_from_dict(data: dict) -> RecipeConfig:
    """Rebuild a config from its `to_dict` form (e.g. the copy saved in a checkpoint)."""
    return build_dataclass(RecipeConfig, data)


__all__ = ["ConfigError", "RecipeConfig", "config_from_dict", "dump_yaml", "load_config", "to_dict"]
