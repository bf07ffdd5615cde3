"""The import graph of the project's own packages: which layer imports which, and any import cycle.

    python scripts/import_graph.py            # layers, then "no import cycle" (exit 0) or each cycle (exit 1)
    python scripts/import_graph.py --modules  # every module and the project modules it imports

Imports inside functions count (they run too); ``if TYPE_CHECKING:`` imports do not. Layers, lowest first: a module
may import its own layer and the layers below it, never one above (:data:`LAYERS`).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The project's packages, lowest layer first; ``bento`` and ``pipelines`` share the top (neither imports the other).
LAYERS = {"models": 0, "cellops": 1, "cellops_napari": 2, "tracking": 2, "steps": 3, "pipelines": 4, "bento": 4, "scripts": 5,
          "benchmarks": 5}
#: Packages that are the project's own (imports of anything else are third-party or the standard library).
PACKAGES = ("models", "cellops", "cellops_napari", "tracking", "steps", "pipelines", "bento")


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted module name of a file under ``root`` (a package's ``__init__`` is the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Full names of the modules a file imports, nested imports included and ``TYPE_CHECKING`` blocks excluded;
    ``from package import name`` counts as ``package.name`` when that is a module."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def project_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (modules of :data:`PACKAGES` that exist under ``root``)."""
    files = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]
    modules = {module_name(p, root): p for p in files}
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list.

    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, or between the two top layers (:data:`LAYERS`), as ``importer -> imported``.

    >>> layer_violations({"cellops.cli": {"tracking.cli"}, "tracking.cli": {"cellops.batch"}})
    ['cellops.cli -> tracking.cli']
    """
    bad = []
    for module, imported in sorted(graph.items()):
        top = module.split(".")[0]
        for other in sorted(imported):
            other_top = other.split(".")[0]
            if other_top != top and LAYERS[other_top] >= LAYERS[top]:
                bad.append(f"{module} -> {other}")
    return bad


def package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages it imports."""
    edges: dict[str, set[str]] = {}
    for module, imported in graph.items():
        edges.setdefault(module.split(".")[0], set()).update(
            m.split(".")[0] for m in imported if m.split(".")[0] != module.split(".")[0])
    return edges


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="print every module's project imports")
    args = parser.parse_args(argv)
    graph = project_graph()
    if args.modules:
        for module, imported in sorted(graph.items()):
            print(f"{module}: {', '.join(sorted(imported)) or '-'}")
    for package, imported in sorted(package_edges(graph).items(), key=lambda kv: LAYERS[kv[0]]):
        print(f"{package} (layer {LAYERS[package]}) imports: {', '.join(sorted(imported, key=LAYERS.get)) or '-'}")
    cycles, violations = find_cycles(graph), layer_violations(graph)
    for cycle in cycles:
        print("import cycle: " + " <-> ".join(cycle))
    for violation in violations:
        print("layer violation: " + violation)
    if not cycles and not violations:
        print(f"{len(graph)} modules: no import cycle, no import of a higher layer")
    return 1 if cycles or violations else 0


if __name__ == "__main__":
    sys.exit(main())
