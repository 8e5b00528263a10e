"""The package's import structure (docs/ARCHITECTURE.md, "Module map"): no import cycles, and the
model loads without the processor, the engine or the UI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "janus_like"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere (module level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule; `from pkg import name` the package itself
            targets = [
                f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `from pkg import name`: the name or else the package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "janus_like.modeling" in graph["janus_like.pipeline"]  # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_between_subpackages():
    """Each subpackage and top-level module (janus_like.X) is one unit: the engine package does not
    import the pipeline built on it, the checkpoint readers import no model, and so on."""
    units: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        unit = ".".join(module.split(".")[:2])
        units.setdefault(unit, set()).update(".".join(m.split(".")[:2]) for m in imported)
    for unit, imported in units.items():
        imported.discard(unit)
    cycle = find_cycle(units)
    assert cycle is None, "import cycle between parts of the package: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_model_imports_without_processor_engine_or_ui():
    code = (
        "import sys, janus_like.modeling; "
        "print(sorted(m for m in sys.modules if m.startswith(('janus_like.processor', 'janus_like.generation', "
        "'janus_like.pipeline', 'janus_like.demo', 'gradio'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    ).stdout
    assert out.strip() == "[]"
