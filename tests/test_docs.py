"""The docs stay true to the tree: every file or module they name exists, and no link leaves the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/architecture.md", "docs/demo.md", "eval/README.md"]
TOP = ("vision_encoders", "projectors", "conversation", "vlm", "instruct_data", "train", "eval", "synthetic", "app",
       "tests", "docs", "configs", "scripts", "bench")
# Paths a doc may name before the change that adds them lands (empty: every named path exists).
PENDING: set[str] = set()


def named_paths(text: str) -> list[str]:
    """Repository paths in backticks (`train/loop.py`, `conversation/chat_templates/`), patterns left out."""
    found = re.findall(r"`((?:%s)/[\w./-]*)`" % "|".join(TOP), text)
    return [p for p in found if not re.search(r"[<>*{}]", p)]


def named_modules(text: str) -> list[str]:
    return re.findall(r"`((?:%s)(?:\.\w+)+)" % "|".join(TOP[:9]), text)


@pytest.mark.parametrize("doc", DOCS)
def test_named_files_and_modules_exist(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    missing = [p for p in named_paths(text) if p not in PENDING and not (REPO / p).exists()]
    for module in named_modules(text):
        parts = module.split(".")
        # a module path, possibly followed by an attribute (`train.recipes.run`): its longest module prefix must exist
        if not any((REPO / "/".join(parts[:k])).with_suffix(".py").exists() or (REPO / "/".join(parts[:k])).is_dir()
                   for k in range(2, len(parts) + 1)):
            missing.append(module)
    assert missing == []


@pytest.mark.parametrize("doc", DOCS)
def test_no_link_leaves_the_repository(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    assert re.findall(r"\]\((?:https?:|\.\./)[^)]*\)|`\.\./[^`]*`", text) == []
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        assert (REPO / Path(doc).parent / target).resolve().is_relative_to(REPO), target
