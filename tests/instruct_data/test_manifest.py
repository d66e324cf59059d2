"""The data manifest: a mixture's drawn records rebuilt exactly from the gzip JSON, and changed files refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from instruct_data.manifest import (ManifestError, build_manifest, read_manifest, rebuild, sha256_file,
                                    write_manifest)
from instruct_data.mixture import load_mixture
from instruct_data.sources import load_records


def _file(path: Path, prefix: str, n: int) -> Path:
    path.write_text(json.dumps([{"id": f"{prefix}{i}", "conversations": [
        {"from": "human", "value": f"q {i}"}, {"from": "gpt", "value": f"a {i}"}]} for i in range(n)]))
    return path


@pytest.fixture()
def mixture(tmp_path: Path) -> Path:
    _file(tmp_path / "a.json", "a", 50)
    _file(tmp_path / "b.json", "b", 40)
    _file(tmp_path / "c.json", "c", 30)
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"datasets": [
        {"json_path": "a.json", "sampling_strategy": "first:7", "name": "A"},
        {"json_path": "b.json", "sampling_strategy": "end:5", "weight": 2.0, "name": "B"},
        {"json_path": "c.json", "sampling_strategy": "random:30%", "weight": 1.5, "name": "C"}]}))
    return path


def _ids(records) -> list[str]:
    return [records.raw(i)["id"] for i in range(len(records))]


def test_manifest_round_trip_rebuilds_the_drawn_records(mixture: Path, tmp_path: Path) -> None:
    records = load_mixture(mixture, seed=11)
    manifest = build_manifest(records, seed=11, mixture=mixture)
    path = write_manifest(manifest, tmp_path / "data_manifest.json.gz")
    back = read_manifest(path)
    assert back == json.loads(json.dumps(manifest))
    assert [s["sha256"] for s in back["sources"]] == [sha256_file(tmp_path / f) for f in ("a.json", "b.json", "c.json")]
    assert [(s["name"], s["strategy"], s["weight"]) for s in back["sources"]] == \
        [("A", "first:7", 1.0), ("B", "end:5", 2.0), ("C", "random:30%", 1.5)]
    rebuilt = rebuild(back)
    assert list(zip(rebuilt.which, rebuilt.local)) == list(zip(records.which, records.local))
    assert _ids(rebuilt) == _ids(records) == back["ids"]
    assert back["ids"][:7] == [f"a{i}" for i in range(7)]
    assert back["ids"][7:17] == [f"b{i}" for i in range(35, 40)] * 2
    c = back["ids"][17:]
    assert len(c) == 9 + round(0.5 * 9) and set(c) <= {f"c{i}" for i in range(30)}
    # first:N and end:N are one run of consecutive indices each (per repeat): compact
    assert back["runs"][:3] == [[0, 0, 7], [1, 35, 5], [1, 35, 5]]


def test_rebuild_refuses_a_changed_file_and_follows_a_moved_one(mixture: Path, tmp_path: Path) -> None:
    manifest = build_manifest(load_mixture(mixture, seed=0), seed=0)
    moved = tmp_path / "moved_a.json"
    moved.write_bytes((tmp_path / "a.json").read_bytes())
    assert _ids(rebuild(manifest, relocate={"A": moved}))[:7] == [f"a{i}" for i in range(7)]
    _file(tmp_path / "a.json", "x", 50)
    with pytest.raises(ManifestError, match="'A'.*changed since the run"):
        rebuild(manifest)
    (tmp_path / "b.json").unlink()
    with pytest.raises(ManifestError, match="'B'.*not found"):
        rebuild(manifest, relocate={"A": moved})


def test_manifest_of_plain_files(tmp_path: Path) -> None:
    records = load_records([_file(tmp_path / "a.json", "a", 3), _file(tmp_path / "b.json", "b", 2)])
    manifest = build_manifest(records)
    assert manifest["runs"] == [[0, 0, 3], [1, 0, 2]] and manifest["ids"] == ["a0", "a1", "a2", "b0", "b1"]
    assert _ids(rebuild(manifest)) == manifest["ids"]
    with pytest.raises(ManifestError, match="not a readable data manifest"):
        read_manifest(tmp_path / "a.json")


def test_a_files_sha256_is_read_once_while_it_is_unchanged(tmp_path: Path, monkeypatch) -> None:
    """The manifest and the length cache's key both hash the record file: the second asks reads nothing."""
    import hashlib
    import os

    from instruct_data import manifest

    path = tmp_path / "data.json"
    path.write_bytes(b"[1, 2]")
    first = manifest.sha256_file(path)
    assert first == hashlib.sha256(b"[1, 2]").hexdigest()

    def no_read(*args, **kwargs):
        raise AssertionError("read again")

    with monkeypatch.context() as m:
        m.setattr(manifest, "open", no_read, raising=False)
        assert manifest.sha256_file(path) == first
    path.write_bytes(b"[3, 4]")  # same size, new content
    os.utime(path, ns=(1, 1))
    assert manifest.sha256_file(path) == hashlib.sha256(b"[3, 4]").hexdigest()
