"""What can be named in a recipe: the registered parts and rewards, the built-in recipes, and every recipe key.

Pure data gathering for `creditrl list` and for the generated recipe reference `docs/configuration.md`
(`creditrl list keys --markdown > docs/configuration.md`). Nothing here is written by hand twice: a part's summary
is the first docstring line of its registered class or function, an option's or key's meaning is the comment on
(or the comment lines just above) its dataclass field, types and defaults come from the dataclasses themselves.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from creditrl.algorithms import ADVANTAGES, POLICY_LOSSES, REGULARIZERS, TOKEN_WEIGHTS
from creditrl.config.loader import RECIPES_DIR
from creditrl.config.schema import RecipeConfig
from creditrl.registry import PartSpec, Registry
from creditrl.rewards import REWARDS

NO_DESCRIPTION = "(no description)"
REGENERATE = "creditrl list keys --markdown > docs/configuration.md"

# recipe key of each registry -> registry (the order `creditrl list parts` prints them in)
PART_REGISTRIES: dict[str, Registry] = {
    "algorithm.advantage": ADVANTAGES,
    "algorithm.policy_loss": POLICY_LOSSES,
    "algorithm.token_weights": TOKEN_WEIGHTS,
    "algorithm.regularizers": REGULARIZERS,
}
REWARD_REGISTRIES: dict[str, Registry] = {"reward.fns": REWARDS}


@dataclass(frozen=True)
class Option:
    """One key: its (dotted) name, its type and default as YAML text, and one line of meaning."""

    name: str
    type: str
    default: str
    doc: str


@dataclass(frozen=True)
class Item:
    """One registered part, reward or built-in recipe: where it is named, its name, summary and options."""

    key: str  # the recipe key that names it (e.g. algorithm.policy_loss), or "recipe"
    name: str
    summary: str
    options: tuple[Option, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# field comments, types and defaults


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """field name -> its comment in the class source: the trailing `# ...` on the field's lines, else the comment
    lines just above it. Fields without either are missing from the result."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    trailing: dict[int, str] = {}
    own_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            line = tok.start[0]
            (own_line if not tok.line[:tok.start[1]].strip() else trailing)[line] = text
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        lines = [trailing[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in trailing]
        if not lines:
            n = node.lineno - 1
            while n in own_line:
                lines.insert(0, own_line[n])
                n -= 1
        text = " ".join(s for s in lines if s and not s.startswith(("type:", "noqa")))
        if text:
            out[node.target.id] = text
    return out


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""  # the signature dataclasses writes when a class has no docstring
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def type_text(tp: Any) -> str:
    """A type hint as a reader of YAML sees it: `int`, `float | null`, `list[str]`, `"hf" | "vllm"`."""
    if tp is type(None):
        return "null"
    if tp is PartSpec:
        return "part"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args if a is not Ellipsis)}]"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A default value as YAML flow text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and value.strip() == value and value[0] not in "[{&*!|>'\"%@`#" else f'"{value}"'
    if isinstance(value, PartSpec):
        return value.name
    if dataclasses.is_dataclass(value):
        return value_text({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return repr(value)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in `tp` (`X` or `X | None`), if any (PartSpec is a part, not a section)."""
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and dataclasses.is_dataclass(t) and t is not PartSpec:
            return t
    return None


def options_of(config_cls: type) -> tuple[Option, ...]:
    """The YAML options of a part or reward: the fields of its config dataclass."""
    hints, docs, out = _hints(config_cls), field_docs(config_cls), []
    try:
        defaults = config_cls()
    except Exception:  # noqa: BLE001  (a config without defaults for every field: show the declared defaults)
        defaults = None
    for f in dataclasses.fields(config_cls):
        if defaults is not None:
            default = value_text(getattr(defaults, f.name))
        elif f.default is not dataclasses.MISSING:
            default = value_text(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = value_text(f.default_factory())
        else:
            default = "(required)"
        out.append(Option(f.name, type_text(hints[f.name]), default, docs.get(f.name, NO_DESCRIPTION)))
    return tuple(out)


def recipe_keys(cls: type = RecipeConfig, prefix: str = "", instance: Any = None) -> list[Option]:
    """Every key of the recipe schema, depth first, with its type, default and meaning. A section (a nested
    dataclass) is listed, then its keys; a section whose default is null (e.g. `preference`) lists the keys it
    has when set."""
    instance = cls() if instance is None else instance
    hints, docs, out = _hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        name, tp = prefix + f.name, hints[f.name]
        value = getattr(instance, f.name)
        sub = _dataclass_of(tp)
        doc = docs.get(f.name) or (_summary(sub) if sub is not None else "") or NO_DESCRIPTION
        if tp is PartSpec or typing.get_args(tp) == (PartSpec,):
            registry = f.metadata.get("registry")
            kind = registry.kind if registry is not None else "part"
            typ = f"{kind} name or {{name: ..., <options>}}"
            if typing.get_origin(tp) is list:
                typ = f"list of ({typ})"
            out.append(Option(name, typ, value_text(value), doc))
            continue
        if sub is not None:
            out.append(Option(name, "section" + (" | null" if value is None else ""), "null" if value is None
                              else "", doc))
            out.extend(recipe_keys(sub, name + ".", value if value is not None else sub()))
            continue
        out.append(Option(name, type_text(tp), value_text(value), doc))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the lists of `creditrl list`


def _items(registries: dict[str, Registry]) -> list[Item]:
    out = []
    for key, registry in registries.items():
        for name in registry.names():
            entry = registry.get(name)
            out.append(Item(key, name, entry.summary or _summary(entry.build) or NO_DESCRIPTION,
                            options_of(entry.config_cls)))
    return out


def list_parts() -> list[Item]:
    """Every registered algorithm part, grouped by the recipe key that names it."""
    return _items(PART_REGISTRIES)


def list_rewards() -> list[Item]:
    """Every registered reward function (`reward.fns`)."""
    return _items(REWARD_REGISTRIES)


def list_recipes(directory: Path = RECIPES_DIR) -> list[Item]:
    """The built-in recipes: name (what `creditrl train NAME` takes) and the first sentence of their header
    comment (else their `name:`); the recipe each extends as its one option."""
    out = []
    for path in sorted(directory.glob("*.yaml")):
        lines = path.read_text().splitlines()
        header = []
        for line in lines:  # the header comment: the comment lines before the first other line
            if not line.strip().startswith("#"):
                break
            header.append(line.strip().lstrip("#").strip())
        top = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines
                                                    if line[:1].isalpha() and ":" in line)}
        summary = _first_sentence(" ".join(header))
        summary = summary or (f"name: {top['name']}" if top.get("name") else NO_DESCRIPTION)
        extends = top.get("extends", "")
        options = (Option("extends", "recipe", extends, "the recipe it builds on"),) if extends else ()
        out.append(Item("recipe", path.stem, summary, options))
    return out


def _first_sentence(text: str) -> str:
    """Up to the first ". " (a sentence end), or all of it."""
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


TARGETS = ("parts", "rewards", "recipes", "keys", "all")


# ---------------------------------------------------------------------------------------------------------------
# docs/configuration.md


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def reference_markdown() -> str:
    """The text of docs/configuration.md: every recipe key, and every part and reward with its options."""
    lines = [
        "# Recipe reference",
        "",
        f"<!-- Generated from the code by `{REGENERATE}`; do not edit by hand. "
        "tests/test_catalog.py fails when this file is out of date. -->",
        "",
        "Every key of a recipe (creditrl/config/schema.py and the configs it nests), with its type, its default "
        "and one line of meaning taken from the comment on its dataclass field. A recipe states only what differs "
        "from these defaults; `creditrl config show RECIPE` prints the resolved values. Keys that select a "
        "registered part (`algorithm.advantage`, `algorithm.policy_loss`, `algorithm.token_weights`, "
        "`algorithm.regularizers`, `reward.fns`) take a name or `{name: ..., <options>}`; the parts and their "
        "options are listed below and by `creditrl list parts` / `creditrl list rewards`.",
        "",
        f"Regenerate after changing the schema: `{REGENERATE}`.",
        "",
    ]
    keys = recipe_keys()
    sections: dict[str, list[Option]] = {}
    for opt in keys:
        top = opt.name.split(".")[0] if "." in opt.name or opt.type.startswith("section") else ""
        sections.setdefault(top, []).append(opt)
    for top, opts in sections.items():
        lines += [f"## `{top}`" if top else "## Top level", ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for o in opts:
            lines.append(f"| {_code(o.name)} | {_code(o.type)} | {_code(o.default)} | {_cell(o.doc)} |")
        lines.append("")
    for title, items in (("Algorithm parts", list_parts()), ("Reward functions", list_rewards())):
        lines += [f"## {title}", ""]
        last_key = None
        for it in items:
            if it.key != last_key:
                lines += [f"### `{it.key}`", ""]
                last_key = it.key
            lines += [f"**`{it.name}`**: {it.summary}", ""]
            if it.options:
                lines += ["| option | type | default | meaning |", "|---|---|---|---|"]
                for o in it.options:
                    lines.append(f"| {_code(o.name)} | {_code(o.type)} | {_code(o.default)} | {_cell(o.doc)} |")
            else:
                lines.append("No options.")
            lines.append("")
    lines += ["## Built-in recipes", "", "| recipe | extends | summary |", "|---|---|---|"]
    for it in list_recipes():
        ext = it.options[0].default if it.options else ""
        lines.append(f"| {_code(it.name)} | {_code(ext)} | {_cell(it.summary)} |")
    return "\n".join(lines).rstrip() + "\n"


def undocumented_keys() -> list[str]:
    """Recipe keys and part options whose meaning has no comment in the code (shown as "(no description)")."""
    out = [o.name for o in recipe_keys() if o.doc == NO_DESCRIPTION]
    for it in list_parts() + list_rewards():
        out += [f"{it.key}[{it.name}].{o.name}" for o in it.options if o.doc == NO_DESCRIPTION]
    return out
