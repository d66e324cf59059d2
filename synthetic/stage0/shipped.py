"""The stage-0 backbones shipped in the repository: where they are, their manifest, and its check.

The manifest records how they were made (configs, the world's settings, the command, wall times, metrics)
and a sha256 per file, so a test can tell that the files in the tree are the ones the manifest describes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlm.atomic import atomic_file

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "backbones"
MANIFEST = "manifest.json"
_NOT_HASHED = {MANIFEST, "stage0.json"}  # stage0.json is the run cache record: it holds the metrics again


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative POSIX paths), the manifest itself excepted."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.name not in _NOT_HASHED}


def write_manifest(root: Path, **facts: object) -> dict:
    """Write `root/manifest.json`: the given facts plus the sha256 of every file under `root`."""
    manifest = {**facts, "files": file_hashes(root)}
    with atomic_file(root / MANIFEST) as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_problems(root: Path) -> list[str]:
    """What does not match the manifest (missing, changed or unlisted files); empty when all match."""
    path = root / MANIFEST
    if not path.is_file():
        return [f"{path} not found"]
    listed = json.loads(path.read_text())["files"]
    actual = file_hashes(root)
    problems = [f"{name}: missing" for name in sorted(set(listed) - set(actual))]
    problems += [f"{name}: not in the manifest" for name in sorted(set(actual) - set(listed))]
    problems += [f"{name}: sha256 differs from the manifest" for name in sorted(set(listed) & set(actual))
                 if listed[name] != actual[name]]
    return problems
