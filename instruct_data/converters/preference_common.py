"""Shared pieces of the preference converters: row reading (JSON / JSONL / parquet), embedded images, the record."""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from instruct_data.converters.common import IMAGE_TOKEN, ConversionError, ConversionResult, load_json, turn

# Magic numbers of the image formats these datasets embed; anything else is written as .bin and named in errors.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
)


def read_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each row of a .parquet, .jsonl or .json (list) file; `where` names file and row."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise ConversionError(path, f"not a readable parquet file ({type(exc).__name__}: {exc})") from None
        n = 0
        for batch in parquet.iter_batches(batch_size=256):  # rows with embedded images: never the whole file
            for row in batch.to_pylist():
                yield f"row {n}", row
                n += 1
    elif path.suffix == ".jsonl":
        with path.open("r", encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"line {n}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConversionError(path, f"line {n}: not valid JSON ({exc.msg})") from None
    elif path.suffix == ".json":
        data = load_json(path, "a JSON list of rows")
        if not isinstance(data, list):
            raise ConversionError(path, f"expected a JSON list of rows, got {type(data).__name__}")
        for n, row in enumerate(data):
            yield f"row {n}", row
    else:
        raise ConversionError(path, "unsupported file type (use .parquet, .jsonl or .json)")


def text_field(row: Any, key: str, source: str | Path, where: str) -> str:
    """row[key] as a string, or a ConversionError naming the record and the missing or mistyped field."""
    if not isinstance(row, dict):
        raise ConversionError(source, f"{where}: expected an object, got {type(row).__name__}")
    if key not in row or row[key] is None:
        raise ConversionError(source, f"{where}{_record_name(row)}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise ConversionError(source, f"{where}{_record_name(row)}: {key!r} should be a string, "
                                      f"got {type(value).__name__}")
    return value


def _record_name(row: dict[str, Any]) -> str:
    for key in ("idx", "id"):
        if row.get(key) is not None:
            return f" ({key} {row[key]!r})"
    return ""


def record_id(row: dict[str, Any], prefix: str, where: str) -> str:
    """`prefix-<idx or id>`, else `prefix-<where>` (the row number) when the row carries no id."""
    for key in ("idx", "id"):
        if row.get(key) is not None:
            return f"{prefix}-{row[key]}"
    return f"{prefix}-{where.split()[-1]}"


class ImageWriter:
    """Writes embedded image bytes under `root/subdir`, named by content hash (pairs sharing an image share a file)."""

    def __init__(self, root: Path | None, subdir: str) -> None:
        self.root, self.subdir = root, subdir
        self.written = 0

    def save(self, data: bytes, source: str | Path, where: str) -> str:
        if self.root is None:
            raise ConversionError(source, f"{where}: the image is embedded (bytes): give --image-root DIR to write "
                                          "it out")
        ext = next((e for magic, e in _MAGIC if data.startswith(magic)), None)
        if ext is None:
            ext = _pil_extension(data, source, where)
        rel = f"{self.subdir}/{hashlib.sha1(data).hexdigest()[:20]}{ext}"
        target = self.root / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)  # a killed run never leaves a truncated image under the final name
            self.written += 1
        return rel


def _pil_extension(data: bytes, source: str | Path, where: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "").lower()
    except (UnidentifiedImageError, OSError):
        raise ConversionError(source, f"{where}: the embedded image bytes are not a readable image") from None
    return {"jpeg": ".jpg"}.get(fmt, f".{fmt}" if fmt else ".bin")


def resolve_image(row: dict[str, Any], path_keys: tuple[str, ...], images: ImageWriter, image_prefix: str,
                  source: str | Path, where: str) -> str:
    """The record's `image`: embedded bytes written out, else the row's image path (with `image_prefix`)."""
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes"):
        return images.save(image["bytes"], source, where)
    if isinstance(image, (bytes, bytearray)) and image:
        return images.save(bytes(image), source, where)
    for key in ((("image",) if isinstance(image, str) else ()) + path_keys):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return image_prefix + value.strip()
    if isinstance(image, dict) and isinstance(image.get("path"), str) and image["path"].strip():
        return image_prefix + image["path"].strip()
    names = ", ".join(("image",) + path_keys)
    raise ConversionError(source, f"{where}{_record_name(row)}: no image (none of the fields {names} holds bytes "
                                  "or a path)")


def preference_record(rid: str, image: str, question: str, chosen: str, rejected: str,
                      result: ConversionResult) -> dict[str, Any] | None:
    """The LLaVA preference record, or None (counted in `result.dropped`) for an empty or tied pair."""
    question, chosen, rejected = question.strip(), chosen.strip(), rejected.strip()
    if not question:
        result.drop("empty question")
        return None
    if not chosen or not rejected:
        result.drop("empty chosen or rejected reply")
        return None
    if chosen == rejected:
        result.drop("identical chosen and rejected")
        return None
    prompt = question if IMAGE_TOKEN in question else f"{IMAGE_TOKEN}\n{question}"
    return {"id": rid, "image": image, "conversations": [turn("human", prompt)], "chosen": chosen,
            "rejected": rejected}
