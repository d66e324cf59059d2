"""Tests for vlm.atomic: all-or-nothing file and directory writes."""
from __future__ import annotations

from pathlib import Path

import pytest

from vlm.atomic import atomic_directory, atomic_file


def test_writes_then_renames(tmp_path: Path) -> None:
    target = tmp_path / "out" / "ckpt"
    with atomic_directory(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        (tmp / "a.txt").write_text("new")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["ckpt"]


def test_replaces_an_existing_directory(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_error_leaves_the_old_directory_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "scores.json"
    with atomic_file(target) as f:
        f.write("é new")
        assert not target.exists()  # nothing at the target until the write is finished
    assert target.read_text(encoding="utf-8") == "é new"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_file(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text(encoding="utf-8") == "é new"
    with atomic_file(target, binary=True) as f:
        f.write(b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert [p.name for p in target.parent.iterdir()] == ["scores.json"]  # no temp file left either way


def test_atomic_file_writers_of_one_target_do_not_share_a_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    with atomic_file(target) as first, atomic_file(target) as second:
        assert first.name != second.name
        first.write("first")
        second.write("second")
    assert target.read_text() == "first"  # the outer writer finished last: its whole file wins
