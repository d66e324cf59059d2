"""Shared pieces of the converters: input loading with clear errors, LLaVA-format writing, results."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.atomic import atomic_file

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
LETTER_ANSWER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
IMAGE_TOKEN = "<image>"


class ConversionError(ValueError):
    """An input file that does not match its official format, naming the file, the item and why."""

    def __init__(self, source: str | Path, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


@dataclass
class ConversionResult:
    """Records in LLaVA format plus how many input items were dropped, by reason."""

    records: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def summary(self) -> str:
        text = f"{len(self.records)} records"
        if self.dropped:
            parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()))
            text += f"; dropped {sum(self.dropped.values())} ({parts})"
        return text


def load_json(path: str | Path, what: str) -> Any:
    """Parse a whole JSON file, naming the file and the expected format when it is unreadable."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(path, f"file not found (expected {what})") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(path, f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg} "
                                    f"(expected {what})") from None


def require(item: Any, key: str, kind: type | tuple[type, ...], source: str | Path, where: str) -> Any:
    """item[key], checked to be present and of the given type, or a ConversionError naming `where`."""
    if not isinstance(item, dict):
        raise ConversionError(source, f"{where}: expected an object, got {type(item).__name__}")
    if key not in item:
        raise ConversionError(source, f"{where}: missing key {key!r}")
    value = item[key]
    # bool is an int subclass; an id or a count given as true/false is a format error
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ConversionError(source, f"{where}: {key!r} should be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kind))


def turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


def write_records(records: Iterable[dict[str, Any]], out: str | Path) -> int:
    """Write records as a LLaVA JSON list (`.json`) or one record per line (`.jsonl`); returns the count."""
    out = Path(out)
    if out.suffix not in (".json", ".jsonl"):
        raise ValueError(f"output {out}: use a .json (LLaVA list) or .jsonl file name")
    count = 0
    with atomic_file(out) as f:  # a failed run leaves no half file
        if out.suffix == ".jsonl":
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        else:
            # Written record by record so a large conversion never holds the whole JSON text in memory.
            f.write("[")
            for record in records:
                f.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
                count += 1
            f.write("\n]\n")
    return count


def format_image_path(pattern: str, **fields: Any) -> str:
    """`pattern.format(**fields)`, with a clear error for a pattern naming an unknown field or a bad spec."""
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"image pattern {pattern!r} cannot be filled ({type(exc).__name__}: {exc}); "
                         f"available fields: {', '.join('{' + k + '}' for k in fields)}") from None
