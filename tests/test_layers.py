"""The layering rule of docs/architecture.md, enforced: every package imports only packages in lower layers."""
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
