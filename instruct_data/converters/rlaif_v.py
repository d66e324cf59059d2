"""RLAIF-V and RLHF-V (openbmb parquet: embedded image + question / chosen / rejected) -> preference records."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from instruct_data.converters.common import ConversionError, ConversionResult
from instruct_data.converters.preference_common import (
    ImageWriter,
    preference_record,
    read_rows,
    record_id,
    resolve_image,
    text_field,
)


def convert_rlaif_v(files: list[str | Path], *, image_root: str | Path | None = None,
                    image_prefix: str = "") -> ConversionResult:
    """RLAIF-V-Dataset rows: `image` {bytes, path}, `question`, `chosen`, `rejected`, `idx`, `image_path`, ..."""
    images = ImageWriter(Path(image_root) if image_root is not None else None, "rlaif-v")
    result = ConversionResult(records=[])
    for file in files:
        for where, row in read_rows(file):
            question = text_field(row, "question", file, where)
            chosen = text_field(row, "chosen", file, where)
            rejected = text_field(row, "rejected", file, where)
            image = resolve_image(row, ("image_path",), images, image_prefix, file, where)
            record = preference_record(record_id(row, "rlaif-v", where), image, question, chosen, rejected, result)
            if record is not None:
                result.records.append(record)
    return result


def convert_rlhf_v(files: list[str | Path], *, image_root: str | Path | None = None,
                   image_prefix: str = "") -> ConversionResult:
    """RLHF-V-Dataset rows: `image` {bytes, path}, `text` (a JSON string: question, chosen, rejected), `idx`, ..."""
    images = ImageWriter(Path(image_root) if image_root is not None else None, "rlhf-v")
    result = ConversionResult(records=[])
    for file in files:
        for where, row in read_rows(file):
            text = _text(row, file, where)
            question = text_field(text, "question", file, f"{where} 'text'")
            chosen = text_field(text, "chosen", file, f"{where} 'text'")
            rejected = text_field(text, "rejected", file, f"{where} 'text'")
            image = resolve_image(row, ("image_path",), images, image_prefix, file, where)
            record = preference_record(record_id(row, "rlhf-v", where), image, question, chosen, rejected, result)
            if record is not None:
                result.records.append(record)
    return result


def _text(row: Any, file: str | Path, where: str) -> dict[str, Any]:
    """RLHF-V's `text` field: a JSON-encoded object (the published parquet) or an object (its older JSONL)."""
    raw = row.get("text") if isinstance(row, dict) else None
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        name = f" (idx {row['idx']!r})" if isinstance(row, dict) and row.get("idx") is not None else ""
        raise ConversionError(file, f"{where}{name}: missing field 'text' (a JSON object with question, chosen, "
                                    "rejected)")
    try:
        text = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConversionError(file, f"{where}: 'text' is not valid JSON ({exc.msg})") from None
    if not isinstance(text, dict):
        raise ConversionError(file, f"{where}: 'text' should encode an object, got {type(text).__name__}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, nargs="+", type=Path,
                        help="the dataset's .parquet file(s) (or .jsonl / .json rows with the same fields)")
    parser.add_argument("--image-root", type=Path,
                        help="folder the embedded images are written to (records name them relative to it: use it "
                             "as data.image_folder)")
    parser.add_argument("--image-prefix", default="",
                        help="prepended to image_path for rows that carry a path instead of bytes")


def run_rlaif_v(args: argparse.Namespace) -> ConversionResult:
    return convert_rlaif_v(args.input, image_root=args.image_root, image_prefix=args.image_prefix)


def run_rlhf_v(args: argparse.Namespace) -> ConversionResult:
    return convert_rlhf_v(args.input, image_root=args.image_root, image_prefix=args.image_prefix)
