"""Prediction files: the runner's append-only JSONL, chunk merging, and any system's results files."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.items import BenchmarkFileError, read_json, read_jsonl
from vlm.atomic import atomic_file


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Records already written, by question id; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return {}
    done: dict[str, dict[str, Any]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break  # the interrupted write of the last record: it is redone
            raise BenchmarkFileError(f"{path}:{n}: corrupt prediction line (not the last one)") from None
        done[str(row["question_id"])] = row
    return done


def repair_tail(path: Path) -> None:
    """Drop a torn last line so appends start on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        path.write_bytes(data[:cut])


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines and fsync, so a killed run loses at most the batch in flight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.writelines(_jsonl(r) for r in records)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSON lines atomically (a reader sees the old file or the whole new one)."""
    with atomic_file(path) as f:
        f.writelines(_jsonl(r) for r in records)


def _jsonl(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


_ID_KEYS = ("question_id", "questionId", "image_id", "image")
_TEXT_KEYS = ("text", "answer", "prediction", "caption")


def _row_pair(row: dict[str, Any], where: str) -> tuple[str, str]:
    qid = next((row[k] for k in _ID_KEYS if k in row), None)
    text = next((row[k] for k in _TEXT_KEYS if k in row), None)
    if qid is None or text is None:
        raise BenchmarkFileError(f"{where}: a prediction needs an id ({'/'.join(_ID_KEYS)}) "
                                 f"and an answer ({'/'.join(_TEXT_KEYS)}); got keys {sorted(row)}")
    return str(qid), str(text)


def read_prediction_file(path: Path) -> dict[str, str]:
    """Predictions of any system: VQAv2 `[{question_id, answer}]`, GQA `[{questionId, prediction}]`,
    COCO `[{image_id, caption}]`, or JSONL (LLaVA answers `{question_id, text}`). Duplicate ids are an error."""
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: predictions file not found")
    head = path.read_text(encoding="utf-8").lstrip()[:1]
    rows = read_json(path) if head == "[" else read_jsonl(path)
    if not isinstance(rows, list):
        raise BenchmarkFileError(f"{path}: expected a JSON list or JSON lines of predictions")
    out: dict[str, str] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BenchmarkFileError(f"{path} record #{i}: expected an object")
        qid, text = _row_pair(row, f"{path} record #{i}")
        if qid in out:
            raise BenchmarkFileError(f"{path} record #{i}: duplicate prediction for id {qid}")
        out[qid] = text
    return out
