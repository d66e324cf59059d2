"""The layering rule of docs/architecture.md, enforced: every package imports only packages in lower layers, and no
package holds an import circle among its own modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Bottom to top. A package may import its own modules and any package of a lower layer; packages of one
# layer do not import each other.
LAYERS: list[set[str]] = [
    {"vision_encoders", "projectors", "conversation"},
    {"vlm"},
    {"instruct_data"},
    {"train", "eval"},
    {"synthetic"},
    {"app"},
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) for every absolute import in the file; relative imports as '.'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." if node.level else (node.module or "").split(".")[0]))
    return [(line, name) for line, name in found if name == "." or name in LAYER_OF]


def violations(package_root: Path, repo: Path = REPO) -> list[str]:
    package = package_root.name
    bad = []
    for path in sorted(package_root.rglob("*.py")):
        for line, imported in imported_packages(path):
            where = f"{path.relative_to(repo)}:{line}"
            if imported == ".":
                bad.append(f"{where}: relative import (use the absolute module name)")
            elif imported != package and LAYER_OF[imported] >= LAYER_OF[package]:
                bad.append(f"{where}: {package} (layer {LAYER_OF[package]}) imports {imported} "
                           f"(layer {LAYER_OF[imported]})")
    return bad


def test_every_top_level_package_has_a_layer() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(LAYER_OF), "add the new package to LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("package", sorted(LAYER_OF))
def test_package_imports_only_downward(package: str) -> None:
    assert violations(REPO / package) == []


def test_the_checker_catches_an_upward_and_a_relative_import(tmp_path: Path) -> None:
    fake = tmp_path / "vlm"
    fake.mkdir()
    (fake / "bad.py").write_text("import os\nfrom train.loop import Trainer\nfrom .model import X\n"
                                 "def f():\n    import instruct_data.dataset\n")
    found = violations(fake, tmp_path)
    assert len(found) == 3 and "imports train" in found[0] and "relative" in found[1] and "instruct_data" in found[2]


# ---------------------------------------------------------------------------- circles inside a package
def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import, at module or function level, except those under `if TYPE_CHECKING:` (annotations only)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph(package_root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports at run time (`from a.b import c` counts a.b.c when c
    is a module, else a.b)."""
    root = package_root.parent
    modules = {_module_name(path, root): path for path in sorted(package_root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            else:
                continue  # relative imports are refused by the layering test
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def circles(package_root: Path) -> list[list[str]]:
    """The import circles of a package: its strongly connected components of more than one module."""
    graph = import_graph(package_root)
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    found: list[list[str]] = []
    for module in sorted(graph):
        component = sorted(m for m in graph if m == module or (m in reach[module] and module in reach[m]))
        if len(component) > 1 and component not in found:
            found.append(component)
    return found


@pytest.mark.parametrize("package", sorted(LAYER_OF))
def test_package_has_no_import_circle(package: str) -> None:
    assert circles(REPO / package) == []


def test_the_circle_check_counts_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    fake = tmp_path / "vlm"
    (fake / "sub").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "sub" / "__init__.py").write_text("")
    (fake / "a.py").write_text("from vlm.b import X\n")
    (fake / "b.py").write_text("def f():\n    from vlm.sub import c\n")
    (fake / "sub" / "c.py").write_text("import vlm.a\n")
    (fake / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vlm.e import Y\n")
    (fake / "e.py").write_text("from vlm.d import Z\n")
    assert circles(fake) == [["vlm.a", "vlm.b", "vlm.sub.c"]]
