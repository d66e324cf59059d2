"""No project module is named like a standard-library module (an `import logging` in the wrong place finds ours)."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The one exception, kept because other code builds against its name: `conversation.tokenize` (IGNORE_INDEX).
KNOWN = {"conversation/tokenize.py"}


def test_no_module_shadows_the_standard_library() -> None:
    packages = [p.parent for p in REPO.glob("*/__init__.py")]
    clashes = sorted(str(f.relative_to(REPO)) for pkg in packages for f in pkg.rglob("*.py")
                     if f.stem in sys.stdlib_module_names)
    assert clashes == sorted(KNOWN)
