"""Dataset mixtures from YAML (LLaVA-NeXT style sampling strategies, optional weights), deterministic per seed."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from instruct_data.sources import ConcatRecords, FileRecords, ParquetRecords, RecordSource

STRATEGIES = ("all", "first", "end", "random")
_ENTRY_KEYS = {"json_path", "image_folder", "image_folders", "sampling_strategy", "weight", "name"}


@dataclass
class MixtureEntry:
    """One dataset of a mixture: file, image roots (tried in order), strategy, weight."""

    json_path: Path
    image_folders: list[Path] = field(default_factory=list)
    sampling_strategy: str = "all"
    weight: float = 1.0
    name: str = ""


def _count(spec: str, n: int, where: str) -> int:
    text = spec.strip()
    try:
        value = math.ceil(float(text[:-1]) * n / 100) if text.endswith("%") else int(text)
    except ValueError:
        raise ValueError(f"{where}: bad count {spec!r} (use N or N%)") from None
    if value < 0:
        raise ValueError(f"{where}: negative count {spec!r}")
    return min(value, n)


def select(strategy: str, n: int, rng: np.random.Generator, where: str = "mixture") -> list[int]:
    """Indices chosen by `all`, `first:N`, `end:N`, `random:N` (N or N%) out of n records."""
    kind, _, arg = strategy.partition(":")
    if kind not in STRATEGIES or (kind == "all") != (arg == ""):
        raise ValueError(f"{where}: unknown sampling_strategy {strategy!r}; use all | first:N | end:N | random:N[%]")
    if kind == "all":
        return list(range(n))
    k = _count(arg, n, where)
    if kind == "first":
        return list(range(k))
    if kind == "end":
        return list(range(n - k, n))
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def _weighted(indices: list[int], weight: float, rng: np.random.Generator) -> list[int]:
    """Scale a selection by `weight`: whole repeats, then a random subset for the fraction."""
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    whole, frac = divmod(weight, 1.0)
    out = indices * int(whole)
    extra = round(frac * len(indices))
    if extra:
        out += sorted(int(indices[j]) for j in rng.choice(len(indices), size=extra, replace=False))
    return out


def parse_mixture(path: str | Path) -> list[MixtureEntry]:
    """Read the YAML: `datasets: [{json_path, image_folder | image_folders, sampling_strategy?, weight?, name?}]`.

    Relative paths resolve against the YAML file's folder.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list) or not data["datasets"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'datasets' list")
    base = path.parent
    entries: list[MixtureEntry] = []
    for k, raw in enumerate(data["datasets"]):
        where = f"{path.name}: datasets[{k}]"
        if not isinstance(raw, dict) or "json_path" not in raw:
            raise ValueError(f"{where}: each dataset needs a json_path")
        unknown = sorted(set(raw) - _ENTRY_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}")
        folders = raw.get("image_folders", raw.get("image_folder", []))
        folders = [folders] if isinstance(folders, str) else list(folders or [])
        json_path = base / raw["json_path"]
        entries.append(
            MixtureEntry(
                json_path=json_path,
                image_folders=[base / f for f in folders],
                sampling_strategy=str(raw.get("sampling_strategy", "all")),
                weight=float(raw.get("weight", 1.0)),
                name=str(raw.get("name") or f"{k}:{json_path.stem}"),
            )
        )
    return entries


class MixtureRecords(ConcatRecords):
    """The selected records of every dataset in the mixture, concatenated; `source_name(i)` names the dataset."""

    def __init__(self, entries: list[MixtureEntry], seed: int = 0) -> None:
        sources: list[RecordSource] = []
        items: list[tuple[int, int]] = []
        for s, e in enumerate(entries):
            cls = ParquetRecords if e.json_path.suffix == ".parquet" else FileRecords
            src = cls(e.json_path, e.image_folders, name=e.name)
            rng = np.random.default_rng([seed, s])
            chosen = _weighted(select(e.sampling_strategy, len(src), rng, e.name), e.weight, rng)
            sources.append(src)
            items.extend((s, j) for j in chosen)
        super().__init__(sources, items)
        self.entries = entries


def load_mixture(path: str | Path, seed: int = 0, image_roots: Sequence[str | Path] = ()) -> MixtureRecords:
    """Parse a mixture YAML and build its record source, deterministic for `seed`.

    `image_roots` are tried after each dataset's own image folders.
    """
    entries = parse_mixture(path)
    for e in entries:
        e.image_folders += [Path(r) for r in image_roots]
    return MixtureRecords(entries, seed=seed)
