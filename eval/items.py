"""The uniform question every loader yields, prompt suffixes of LLaVA-1.5, and safe image resolution."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
CHOICE_ANSWER = "\nAnswer with the option's letter from the given choices directly."
VIZWIZ_ANSWER = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT_ANSWER
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."


class BenchmarkFileError(ValueError):
    """A benchmark file is missing or malformed; the message names the file (and record) and why."""


@dataclass(frozen=True)
class Failed:
    """An answer that could not be produced (e.g. the item's image cannot be read): recorded, scored as wrong."""

    reason: str


@dataclass
class EvalItem:
    """One question: id, image (path, PIL image, or None for text-only), full prompt, gold/meta data."""

    question_id: str | int
    image: str | Path | Image.Image | None
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The id as a string: predictions files are keyed by it whatever the id's JSON type."""
        return str(self.question_id)


def read_json(path: Path) -> Any:
    """Parse a JSON file or raise BenchmarkFileError naming it."""
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkFileError(f"{path}: not valid JSON ({err})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file (blank lines skipped) or raise naming the file and line."""
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkFileError(f"{path}:{n}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise BenchmarkFileError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def require(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Raise BenchmarkFileError naming `where` if any key is absent."""
    absent = [k for k in keys if k not in record]
    if absent:
        raise BenchmarkFileError(f"{where}: missing field(s) {absent}")


def confined(root: Path, ref: str | Path) -> Path:
    """`root / ref`, refused if it escapes `root` (`..`, absolute paths, symlinks out)."""
    base = root.resolve()
    path = (base / ref).resolve()
    if path != base and base not in path.parents:
        raise BenchmarkFileError(f"image path {str(ref)!r} escapes the image root {root}")
    return path


def first_existing(root: Path, candidates: list[str], where: str) -> Path:
    """The first candidate file that exists under `root`, or an error listing what was tried."""
    for name in candidates:
        path = confined(root, name)
        if path.is_file():
            return path
    raise BenchmarkFileError(f"{where}: no image found under {root} (tried {candidates})")
