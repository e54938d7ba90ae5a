"""The package's shape: every module imports, no import circle, and imports point down the layers of
DESIGN.md (cli -> train/evaluate/bench -> surgery/checkpoint -> mixers -> cache -> distributed ops -> ops ->
config/arch/errors). The graph is read from the package's own import statements (module level and inside
functions alike), so a function-local import cannot hide a circle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import liger

ROOT = Path(liger.__file__).parent

# Lowest layer first; a module may import modules of its own layer or below, never above. The longest
# matching prefix decides a module's layer. The root package `liger` (the public facade) is the top.
LAYERS: list[tuple[str, ...]] = [
    ("liger.errors", "liger.config", "liger.arch", "liger.atomic", "liger.runinfo", "liger.plotting",
     "liger.memory_estimate", "liger.hf_config"),
    ("liger.ops",),
    ("liger.distributed", "liger.distributed.collectives", "liger.distributed.lasp", "liger.distributed.context",
     "liger.distributed.runtime"),
    ("liger.cache",),
    ("liger.mixers",),
    ("liger.surgery", "liger.checkpoint", "liger.hf_auto", "liger.teacher", "liger.models",
     "liger.distributed.sequence", "liger.distributed.softmax_layers", "liger.distributed.sharding", "liger.data",
     "liger.layer_scores", "liger.layer_selection", "liger.export", "liger.quantize"),
    ("liger.train", "liger.evaluate", "liger.bench"),
    ("liger.cli",),
    ("liger",),
]


def module_names() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("liger", *path.relative_to(ROOT).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = module_names()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """The liger modules `module` imports (and the packages those live in, whose __init__ runs too)."""
    is_package = module == "liger" or (ROOT / Path(*module.split(".")[1:]) / "__init__.py").is_file()
    path = ROOT / "__init__.py" if module == "liger" else (
        ROOT / Path(*module.split(".")[1:]) / "__init__.py" if is_package else ROOT / Path(*module.split(".")[1:]).with_suffix(".py"))
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node, is_package)
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    found = set()
    for t in targets:
        while t and t not in MODULES:
            t = t.rpartition(".")[0]
        parts = t.split(".")
        # importing liger.a.b runs liger/a/__init__ first (the root facade is left out: it is the top layer)
        found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    # the packages that hold `module` are initialised before it runs: importing a sibling adds no edge to them
    found -= {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    return {m for m in found if m in MODULES}


def layer(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer of LAYERS"
    return rank


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_import_circle():
    graph = {m: imports_of(m) for m in MODULES if m != "liger"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if n == "liger":
                continue
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_point_down_the_layers():
    upward = [f"{m} (layer {layer(m)}) imports {n} (layer {layer(n)})"
              for m in MODULES for n in sorted(imports_of(m)) if layer(n) > layer(m)]
    assert not upward, "\n".join(upward)
