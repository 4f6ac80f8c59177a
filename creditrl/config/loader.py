"""YAML -> typed dataclass config, with dotted overrides, recipe inheritance and helpful errors.

    cfg = load_config("recipe.yaml", ["train.steps=50", "algorithm.policy_loss.clip_high=0.28"])

- `extends: other.yaml` (path relative to the recipe, or the name of a built-in recipe) merges the recipe
  over another one; mappings merge key by key, lists and scalars replace.
- Overrides are `dotted.key=value`; the value is parsed as YAML (`true`, `3`, `[a, b]`, `{name: x}`).
- Every key is checked against the dataclass schema. An unknown key is an error that names the key, where it
  came from (file and line, or the override) and the closest valid key. A wrong type names the expected type.
- Parts chosen by name (`PartSpec` fields, e.g. `algorithm.policy_loss`) are validated against the config
  dataclass their registry holds for that name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from creditrl.registry import PartSpec, Registry, UnknownNameError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class ConfigError(ValueError):
    """A configuration mistake, with a message meant for the user (no traceback needed)."""


# ---------------------------------------------------------------------------------------------------------
# Reading YAML with the origin (file:line) of every key
# ---------------------------------------------------------------------------------------------------------
Origins = dict[str, str]  # dotted key -> "file:line" or "override 'k=v'"


def _node_to_python(node: yaml.Node, file: str, prefix: str, origins: Origins) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            path = f"{prefix}.{key}" if prefix else key
            origins[path] = f"{file}:{key_node.start_mark.line + 1}"
            out[key] = _node_to_python(value_node, file, path, origins)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(v, file, f"{prefix}[{i}]", origins) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def read_yaml(path: Path, origins: Origins) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"recipe file not found: {path}. Check the path, or list built-in recipes in "
                          f"{RECIPES_DIR}.") from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if node is None:
        return {}
    data = _node_to_python(node, str(path), "", origins)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping (key: value), got {type(data).__name__}")
    return data


def resolve_recipe_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe path as given, relative to another recipe, or a built-in recipe name (with or without .yaml)."""
    p = Path(name)
    candidates = [p]
    if relative_to is not None and not p.is_absolute():
        candidates.insert(0, relative_to.parent / p)
    stem = p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml"
    candidates.append(RECIPES_DIR / stem)
    for c in candidates:
        if c.is_file():
            return c
    return p


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        same_part = isinstance(out.get(k), dict) and v.get("name", out[k].get("name")) == out[k].get("name") \
            if isinstance(v, dict) else False
        if isinstance(v, dict) and isinstance(out.get(k), dict) and same_part:
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_recipe_dict(path: str | Path, origins: Origins, _seen: tuple = ()) -> dict:
    """Read a recipe and the chain of recipes it `extends`, merged."""
    p = resolve_recipe_path(path)
    if p.resolve() in _seen:
        raise ConfigError(f"recipe {p} extends itself (cycle: {' -> '.join(map(str, _seen))})")
    data = read_yaml(p, origins)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = resolve_recipe_path(parent, relative_to=p)
    base = load_recipe_dict(parent_path, origins, _seen + (p.resolve(),))
    return _deep_merge(base, data)


def apply_override(data: dict, override: str, origins: Origins) -> None:
    """Apply one `a.b.c=value` override in place."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.sub=value (e.g. train.steps=50)")
    key, raw = override.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{override}': value is not valid YAML: {e}") from None
    parts = key.split(".")
    node = data
    for i, k in enumerate(parts[:-1]):
        nxt = node.get(k)
        if isinstance(nxt, str) and i + 1 < len(parts):  # `advantage: grpo` then `advantage.eps=...`
            nxt = {"name": nxt}
        if not isinstance(nxt, dict):
            nxt = {}
        node[k] = nxt
        node = nxt
    node[parts[-1]] = value
    origins[key] = f"override '{override}'"


# ---------------------------------------------------------------------------------------------------------
# dict -> dataclass, with type checking
# ---------------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


class _Converter:
    def __init__(self, origins: Origins):
        self.origins = origins

    def where(self, path: str) -> str:
        o = self.origins.get(path)
        return f" ({o})" if o else ""

    def fail(self, path: str, msg: str) -> ConfigError:
        return ConfigError(f"{path}{self.where(path)}: {msg}")

    def convert(self, value: Any, tp: Any, path: str, meta: dict | None = None) -> Any:
        meta = meta or {}
        if tp is PartSpec:
            return self.part(value, meta["registry"], path, meta.get("weighted", False), meta.get("default"))
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = get_args(tp)
            if value is None and type(None) in args:
                return None
            errors = []
            for a in args:
                if a is type(None):
                    continue
                try:
                    return self.convert(value, a, path, meta)
                except ConfigError as e:
                    errors.append(e)
            if len(errors) == 1:
                raise errors[0]
            raise self.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        if origin is Literal:
            if value not in get_args(tp):
                close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise self.fail(path, f"expected {_type_name(tp)}, got {value!r}.{hint}")
            return value
        if origin is list:
            if not isinstance(value, list):
                raise self.fail(path, f"expected {_type_name(tp)}, got {value!r}")
            (item,) = get_args(tp)
            return [self.convert(v, item, f"{path}[{i}]", meta) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise self.fail(path, f"expected a mapping, got {value!r}")
            return dict(value)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(value, tp, path)
        if tp is Any:
            return value
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(path, f"expected true/false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(path, f"expected an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, str):  # YAML reads 1e-6 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(path, f"expected a number, got {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise self.fail(path, f"expected a string, got {value!r}")
            return str(value)
        raise self.fail(path, f"unsupported config type {tp!r}")

    def dataclass(self, value: Any, cls: type, path: str, extra_ok: tuple[str, ...] = ()) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}"
                            f", got {value!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, v in value.items():
            sub = f"{path}.{key}" if path else key
            if key in extra_ok:
                continue
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                hint = f" Did you mean '{(path + '.') if path else ''}{close[0]}'?" if close else ""
                valid = ", ".join(fields)
                raise ConfigError(f"unknown config key '{sub}'{self.where(sub)}.{hint} Valid keys here: {valid}.")
            f = fields[key]
            kwargs[key] = self.convert(v, hints[key], sub, dict(f.metadata))
        missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{path or 'recipe'}: missing required key(s) "
                              f"{', '.join((path + '.' if path else '') + m for m in missing)}")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{e}{self.where(path)}") from None

    def part(self, value: Any, registry: Registry, path: str, weighted: bool, default: str | None) -> PartSpec:
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict) and "name" not in value and default is not None:
            value = {"name": default, **value}
        if not isinstance(value, dict) or "name" not in value:
            raise self.fail(path, f"expected a {registry.kind} name or a mapping with 'name:', got {value!r}")
        name = value["name"]
        try:
            entry = registry.get(str(name))
        except UnknownNameError as e:
            raise self.fail(f"{path}.name" if f"{path}.name" in self.origins else path, str(e)) from None
        weight = 1.0
        if weighted and "weight" in value:
            weight = self.convert(value["weight"], float, f"{path}.weight")
        reserved = ("name", "weight") if weighted else ("name",)
        opts = {k: v for k, v in value.items() if k not in reserved}
        options = self.dataclass(opts, entry.config_cls, path)
        return PartSpec(str(name), options, weight)


def build_dataclass(cls: type, data: dict, origins: Origins | None = None) -> Any:
    return _Converter(origins or {}).dataclass(data, cls, "")


# ---------------------------------------------------------------------------------------------------------
# dataclass -> plain dict (for `config show`, checkpoints and the run directory)
# ---------------------------------------------------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    if isinstance(obj, PartSpec):
        d: dict[str, Any] = {"name": obj.name}
        if obj.weight != 1.0:
            d["weight"] = obj.weight
        if obj.options is not None:
            d.update(to_dict(obj.options))
        return d
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None, width=110)
