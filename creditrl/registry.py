"""Name -> implementation registries, so a YAML name selects a piece of code.

Every pluggable part (advantage estimators, policy losses, token weights, regularisers, rewards, rollout
engines, learners) registers itself under a short name together with a typed config dataclass. The config
loader uses the dataclass to validate the YAML block of that part, and `build` turns the validated config into
the callable the trainer uses. Adding an algorithm is one module plus one `@REGISTRY.register(...)` line.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered implementation: its name, its config dataclass and its builder."""

    name: str
    config_cls: type
    build: Callable[[Any], T]
    summary: str


class UnknownNameError(KeyError):
    """A YAML name that no implementation is registered under."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text.
        return str(self.args[0])


class Registry(Generic[T]):
    """A named table of implementations of one kind of part (e.g. "policy_loss")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type | None = None) -> Callable:
        """Decorator: register a builder (a class or function taking the config) under `name`.

        `config_cls` must be a dataclass whose fields are the part's YAML options; `None` means no options.
        """
        if config_cls is None:
            config_cls = _EmptyConfig
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"{self.kind} '{name}': config_cls must be a dataclass, got {config_cls!r}")

        def deco(build: Callable[[Any], T]) -> Callable[[Any], T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = (build.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, config_cls, build, doc[0] if doc else "")
            return build

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(self.names()) or '(none)'}."

    def build(self, name: str, config: Any = None) -> T:
        entry = self.get(name)
        return entry.build(config if config is not None else entry.config_cls())

    def __contains__(self, name: str) -> bool:
        return name in self._entries


@dataclass
class _EmptyConfig:
    """Config of a part that takes no options."""


@dataclass
class PartSpec:
    """A registered part chosen in YAML: its name and its validated options (an instance of its config class).

    YAML accepts `advantage: grpo` (defaults) or `advantage: {name: grpo, norm_by_std: false}`.
    """

    name: str
    options: Any = None
    weight: float = 1.0  # only for weighted lists (e.g. reward.fns): YAML `weight:` next to `name:`


def part(registry: Registry, default: str) -> Any:
    """A config field holding one part of `registry`, default `default` with default options."""
    return dataclasses.field(
        default_factory=lambda: PartSpec(default, registry.get(default).config_cls()),
        metadata={"registry": registry, "default": default},
    )


def parts(registry: Registry, weighted: bool = False, default: list[str] | None = None) -> Any:
    """A config field holding a list of parts of `registry`; `weighted` lists also accept `weight:`."""

    def make() -> list[PartSpec]:
        return [PartSpec(n, registry.get(n).config_cls()) for n in (default or [])]

    return dataclasses.field(default_factory=make, metadata={"registry": registry, "weighted": weighted})
