"""Data manifest: each source file's sha256 and the exact records a run drew, gzip JSON, and its rebuild."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from instruct_data.sources import ConcatRecords, FileRecords, ParquetRecords, RecordSource

FORMAT = 1
MANIFEST_NAME = "data_manifest.json.gz"


class ManifestError(ValueError):
    """A manifest that cannot be rebuilt (file changed or missing); names the file."""


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # (path, device, inode, size, mtime ns) -> sha256


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, read once per process while the file is unchanged (the run's manifest and the length
    cache's key both need it: a 1.2 GB file is read once, not twice)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _parts(records: RecordSource) -> tuple[list[RecordSource], list[tuple[int, int]]]:
    """The leaf sources and the run's items as (source, local index), in the run's order."""
    if isinstance(records, ConcatRecords):
        return records.sources, list(zip(records.which, records.local))
    return [records], [(0, j) for j in range(len(records))]


def _runs(items: list[tuple[int, int]]) -> list[list[int]]:
    """[source, start, count] runs of consecutive local indices: `first:N` is one run, `random` a few."""
    runs: list[list[int]] = []
    for s, j in items:
        if runs and runs[-1][0] == s and runs[-1][1] + runs[-1][2] == j:
            runs[-1][2] += 1
        else:
            runs.append([int(s), int(j), 1])
    return runs


def _record_id(source: RecordSource, j: int) -> str | None:
    try:
        raw = source.raw(j)
    except (ValueError, OSError):  # a malformed record: the dataset skips it; the manifest keeps its place
        return None
    value = raw.get("id") if isinstance(raw, dict) else None
    return None if value is None else str(value)


def build_manifest(records: RecordSource, *, seed: int | None = None, mixture: str | Path | None = None,
                   with_ids: bool = True) -> dict[str, Any]:
    """What rebuilds the run's records exactly: files (sha256), the drawn (file, index) runs, and their ids."""
    sources, items = _parts(records)
    entries = {e.name: e for e in getattr(records, "entries", [])}
    out_sources = []
    for src in sources:
        path = Path(getattr(src, "path"))
        name = src.source_name(0) if len(src) else getattr(src, "name", path.stem)
        entry = entries.get(name)
        out_sources.append({
            "name": name, "file": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "records": len(src),
            "strategy": entry.sampling_strategy if entry else "all", "weight": entry.weight if entry else 1.0,
        })
    manifest: dict[str, Any] = {"format": FORMAT, "seed": seed,
                                "mixture": str(Path(mixture).resolve()) if mixture else None,
                                "num_records": len(items), "sources": out_sources, "runs": _runs(items)}
    if with_ids:
        manifest["ids"] = [_record_id(sources[s], j) for s, j in items]
    return manifest


def write_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        json.dump(manifest, fh, separators=(",", ":"))
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: not a readable data manifest ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a data manifest of format {FORMAT}")
    return data


def manifest_items(manifest: dict[str, Any]) -> list[tuple[int, int]]:
    """The (source, local index) items, in the run's order."""
    return [(s, start + k) for s, start, count in manifest["runs"] for k in range(count)]


def rebuild(manifest: dict[str, Any], relocate: dict[str, str | Path] | None = None,
            verify: bool = True) -> ConcatRecords:
    """The run's records from a manifest; `relocate` maps a source name to where its file lives now.

    With `verify`, every file must have the sha256 it had when the run started (else ManifestError)."""
    relocate = relocate or {}
    sources: list[RecordSource] = []
    for src in manifest["sources"]:
        path = Path(relocate.get(src["name"], src["file"]))
        if not path.is_file():
            raise ManifestError(f"source {src['name']!r}: {path} not found (pass its new place in `relocate`)")
        if verify and sha256_file(path) != src["sha256"]:
            raise ManifestError(f"source {src['name']!r}: {path} changed since the run (sha256 differs)")
        cls = ParquetRecords if path.suffix == ".parquet" else FileRecords
        sources.append(cls(path, name=src["name"]))
    return ConcatRecords(sources, manifest_items(manifest))
