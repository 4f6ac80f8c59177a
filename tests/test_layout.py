"""Dependencies point one way (docs/architecture.md): cli -> trainer -> distributed -> learner / rollout ->
algorithms, kernels, models, weights, config. Checked on the import statements of every module, including the
imports inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import creditrl

ROOT = Path(creditrl.__file__).parent

# package -> the creditrl packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "registry": set(),
    "kernels": set(),
    "weights": set(),
    "algorithms": {"kernels", "registry"},
    "rewards": {"registry"},
    "config": {"algorithms", "registry", "rewards"},
    "data": {"config"},
    "models": {"config", "kernels"},  # kernels: the CPU bf16 probe (models/precision.py)
    "rollout": {"config", "models", "weights"},
    "learner": {"algorithms", "config", "kernels", "models", "weights"},
    "preference": {"algorithms", "config", "data", "kernels", "learner", "models", "rewards", "rollout"},
    "distributed": {"algorithms", "config", "learner", "models", "rewards", "rollout", "weights"},
    "trainer": {"algorithms", "config", "data", "distributed", "kernels", "learner", "models", "preference",
                "rewards", "rollout", "weights"},
    "recipes": set(),
    # the file-level checks of a recipe (models, tokenizers, data, reward files), called by the cli
    "preflight": {"algorithms", "config", "data", "models", "registry", "rewards"},
    # what a recipe can name (`creditrl list`, docs/configuration.md), read from the registries and the schema
    "catalog": {"algorithms", "config", "registry", "rewards"},
}
# third-party frameworks that pure-math and low-level packages must not touch
FORBIDDEN_EXTERNAL = {"algorithms": {"ray", "deepspeed", "vllm"}, "kernels": {"ray", "deepspeed", "vllm"},
                      "registry": {"ray", "deepspeed", "vllm"}, "data": {"ray", "deepspeed", "vllm"},
                      "learner": {"vllm"}, "weights": {"deepspeed", "vllm"}}


def _imports() -> dict[tuple[str, str], set[str]]:
    """(package, module file) -> imported top-level names ('creditrl.X' -> 'creditrl.X', others -> root)."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        pkg = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                out[(pkg, str(rel))].add(".".join(parts[:2]) if parts[0] == "creditrl" else parts[0])
    return out


def test_packages_import_only_downward():
    wrong = []
    for (pkg, module), names in _imports().items():
        if pkg not in ALLOWED:
            continue  # top-level modules (cli) may import anything
        for name in names:
            if name.startswith("creditrl."):
                target = name.split(".")[1]
                if target != pkg and target not in ALLOWED[pkg]:
                    wrong.append(f"{module} imports creditrl.{target}")
            elif name in FORBIDDEN_EXTERNAL.get(pkg, ()):
                wrong.append(f"{module} imports {name}")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_vllm_is_imported_in_one_module():
    users = sorted(module for (pkg, module), names in _imports().items() if "vllm" in names)
    assert users == ["rollout/vllm_engine.py"], users


def test_the_allowed_graph_has_no_cycle():
    def visit(pkg: str, stack: tuple[str, ...]) -> None:
        assert pkg not in stack, f"import cycle: {' -> '.join(stack + (pkg,))}"
        for dep in ALLOWED.get(pkg, ()):
            visit(dep, stack + (pkg,))

    for pkg in ALLOWED:
        visit(pkg, ())
