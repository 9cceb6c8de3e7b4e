"""The import graph of the product packages, read with ``ast``: no cycles, and ``recon`` never imports ``img2mesh``.

Every ``import`` and ``from ... import`` counts as an edge, at module level and inside functions alike: a lazy import
hides a cycle from Python's import machinery, not from the design. ``from package import name`` is an edge to the
submodule ``package.name`` where one exists, else to the package. A package's parents are not edges (``import a.b``
runs ``a/__init__.py`` first, but a package re-exporting its own modules is a façade, not a dependency), and
neither are names resolved at run time from strings (``importlib.import_module``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("img2mesh", "recon")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of :data:`PACKAGES` it imports."""
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_function_level_imports_and_finds_a_planted_cycle() -> None:
    graph = import_graph()
    assert "img2mesh.zero123pp.fast_step" in graph["img2mesh.pipeline"]  # imported inside Img2Mesh.load
    assert find_cycle({**graph, "recon.cameras": graph["recon.cameras"] | {"recon.dataset"}}) is not None


def test_the_product_packages_import_each_other_without_cycles() -> None:
    assert find_cycle(import_graph()) is None


def test_the_product_never_imports_evaluation_or_testing_code() -> None:
    apart = ("recon.evaluation", "img2mesh.testing")
    leaks = {m: sorted(t for t in ts if t.startswith(apart)) for m, ts in import_graph().items()}
    assert not {m: ts for m, ts in leaks.items() if ts and not m.startswith(apart)}


def test_recon_never_imports_img2mesh() -> None:
    leaks = {m: sorted(t for t in ts if t.startswith("img2mesh")) for m, ts in import_graph().items()}
    assert not {m: ts for m, ts in leaks.items() if m.startswith("recon") and ts}
