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
import math
import re
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


_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000  # a recipe is small; more nodes than this means aliases that multiply ("billion laughs")


class _YamlReader:
    """YAML nodes -> Python values, recording the file:line of every key; duplicate keys, recursive anchors
    and alias bombs are errors (PyYAML itself silently keeps the last duplicate and recurses forever)."""

    def __init__(self, file: str, origins: Origins):
        self.file, self.origins = file, origins
        self.stack: list[int] = []
        self.count = 0

    def line(self, node: yaml.Node) -> int:
        return node.start_mark.line + 1

    def __call__(self, node: yaml.Node, prefix: str) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise ConfigError(f"{self.file}: the recipe expands to more than {_MAX_NODES} values (anchors and "
                              f"aliases that multiply?). Fix: write the values out instead of nesting aliases.")
        if id(node) in self.stack:
            raise ConfigError(f"{self.file}:{self.line(node)}: key '{prefix or '(top)'}' contains itself through "
                              f"a YAML anchor/alias (&name ... *name inside its own value). Fix: an alias may only "
                              f"refer to an anchor defined before and outside it.")
        self.stack.append(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, prefix)
            if isinstance(node, yaml.SequenceNode):
                return [self(v, f"{prefix}[{i}]") for i, v in enumerate(node.value)]
            try:
                return _scalar(node)
            except yaml.YAMLError as e:
                raise ConfigError(f"{self.file}:{self.line(node)}: value of '{prefix}' is not valid YAML: "
                                  f"{_one_line(e)}") from None
        finally:
            self.stack.pop()

    def mapping(self, node: yaml.MappingNode, prefix: str) -> dict:
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *base` merges the anchored mapping(s); explicit keys win
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    v = self(src, prefix)
                    if not isinstance(v, dict):
                        raise ConfigError(f"{self.file}:{self.line(key_node)}: '<<' (YAML merge) needs a mapping "
                                          f"anchor, got {v!r}")
                    for k, x in v.items():
                        merged.setdefault(k, x)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{self.file}:{self.line(key_node)}: a key under '{prefix or '(top)'}' is a "
                                  f"{'list' if isinstance(key_node, yaml.SequenceNode) else 'mapping'}, not a name. "
                                  f"Fix: keys are plain names like `steps:`")
            key = str(_scalar(key_node))
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                raise ConfigError(f"{self.file}:{self.line(key_node)}: duplicate key '{path}' (first at line "
                                  f"{seen[key]}); YAML would silently keep only the last one. Fix: merge the two "
                                  f"blocks into one or delete one of them.")
            seen[key] = self.line(key_node)
            self.origins[path] = f"{self.file}:{self.line(key_node)}"
            out[key] = self(value_node, path)
        for k, x in merged.items():
            out.setdefault(k, x)
        return out


def _scalar(node: yaml.ScalarNode) -> Any:
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def read_yaml(path: Path, origins: Origins) -> dict:
    if path.is_dir():
        raise ConfigError(f"recipe path {path} is a directory; give a recipe .yaml file (or the name of a "
                          f"built-in recipe, listed in {RECIPES_DIR}).")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"recipe file not found: {path}. Check the path, or list built-in recipes in "
                          f"{RECIPES_DIR}.") from None
    except OSError as e:
        raise ConfigError(f"recipe file {path} can not be read: {e.strerror or e}. Check the path and its "
                          f"permissions.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the recipe is not UTF-8 text (byte {raw[e.start]:#04x} at offset "
                          f"{e.start}). Fix: save the file as UTF-8.") from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_one_line(e)}. Fix the syntax at that line (indentation, "
                          f"a missing ':' or an unclosed quote/bracket).") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML nests too deeply to read. Fix: flatten the recipe.") from None
    if node is None:
        raise ConfigError(f"{path}: the recipe is empty. Fix: state at least what differs from the defaults, "
                          f"e.g. `extends: tiny_grpo` and `name: my-run`.")
    try:
        data = _YamlReader(str(path), origins)(node, "")
    except RecursionError:
        raise ConfigError(f"{path}: the YAML nests too deeply to read. Fix: flatten the recipe.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping (key: value), got {type(data).__name__} "
                          f"{_short(data)}")
    if not data:
        raise ConfigError(f"{path}: the recipe is an empty mapping. Fix: state at least what differs from the "
                          f"defaults, e.g. `extends: tiny_grpo` and `name: my-run`.")
    return data


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


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
    if "extends" not in data:
        return data
    parent = data.pop("extends")
    where = origins.get("extends", str(p))
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"extends ({where}): expected the path or name of one recipe, got {_short(parent)}. "
                          f"Fix: e.g. `extends: tiny_grpo` (one recipe; it may extend another in turn).")
    parent_path = resolve_recipe_path(parent, relative_to=p)
    if not parent_path.is_file():
        raise ConfigError(f"extends ({where}): recipe {parent!r} not found (looked next to {p} and among the "
                          f"built-in recipes in {RECIPES_DIR}). Fix the name or path.")
    parent_origins: Origins = {}
    base = load_recipe_dict(parent_path, parent_origins, _seen + (p.resolve(),))
    child_origins = dict(origins)
    origins.update(parent_origins)
    origins.update(child_origins)  # a key set in this recipe comes from here, not from the recipe it extends
    return _deep_merge(base, data)


def apply_override(data: dict, override: str, origins: Origins) -> None:
    """Apply one `a.b.c=value` override in place."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.sub=value (e.g. train.steps=50)")
    key, raw = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not k.strip() or k != k.strip() for k in parts):
        raise ConfigError(f"override '{override}': '{key}' is not a dotted key name. Fix: e.g. train.steps=50")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{override}': the value {raw!r} is not valid YAML "
                          f"({_one_line(getattr(e, 'problem', None) or e)}). Fix: quote "
                          f"it, e.g. {key}='\"...\"'") from None
    except RecursionError:
        raise ConfigError(f"override '{override}': the value nests too deeply") from None
    if key == "extends":
        raise ConfigError(f"override '{override}': extends can only be set in a recipe file, not as an override")
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
            try:
                value = float(value)
            except OverflowError:
                raise self.fail(path, f"the number {value} is too large") from None
            if not math.isfinite(value):
                raise self.fail(path, f"expected a finite number, got {value}. Fix: give a real value")
            return value
        if tp is str:
            if isinstance(value, (dict, list)):
                raise self.fail(path, f"expected a string, got the {'mapping' if isinstance(value, dict) else 'list'}"
                                f" {value!r}: YAML reads unquoted {{...}}, [...] and 'key: value' as structure. "
                                f"Fix: quote the text, e.g. template: \"Q: {{prompt}}\" (override: "
                                f"'{path}=\"...\"')")
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
        except ConfigError as e:
            raise ConfigError(self.locate(str(e), path)) from None
        except (ValueError, TypeError, ArithmeticError, KeyError, IndexError) as e:
            raise ConfigError(self.locate(str(e), path)) from None

    def locate(self, msg: str, path: str) -> str:
        """Add where the offending keys were set: the dotted keys the message names (their file:line or
        override), else the section's own origin."""
        if "(" in msg and ("override '" in msg or re.search(r"\.ya?ml:\d+\)", msg)):
            return msg  # already located
        named = [k for k in self.origins if ("." in k and re.search(rf"(?<![\w.{{]){re.escape(k)}(?![\w\[])", msg))
                 or ("." not in k and re.match(rf"{re.escape(k)}[ =]", msg))]
        if not named and path:
            named = [k for k in self.origins if k.startswith(path + ".")
                     and re.search(rf"(?<![\w.{{]){re.escape(k[len(path) + 1:])}(?![\w\[}}])", msg)]
        named = [k for k in named if not any(o != k and o.startswith(k + ".") for o in named)]
        if named:
            return f"{msg} (set at: {'; '.join(f'{k} {self.origins[k]}' for k in sorted(named))})"
        return f"{msg}{self.where(path)}"

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
