"""The one reader of record files (.json list, .jsonl, .parquet): entries with their line and byte span, never raising.

A bad entry (malformed JSONL line, NaN, invalid UTF-8, nesting too deep for the parser) comes back as an item
with `error` naming why; a .json list that cannot be read past some point ends with one `fatal` item there.
"""
from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conversation.errors import RecordFileError

CHUNK_CHARS = 1 << 20  # characters read at a time from a JSON list
MAX_RECORD_CHARS = 1 << 26  # a JSON-list element longer than this is reported as malformed
SUFFIXES = (".json", ".jsonl", ".parquet")
# Files are decoded with surrogateescape, so invalid UTF-8 bytes become U+DC80..U+DCFF in the raw text (JSON's
# own \udc80 escapes are still six ASCII characters there): an entry that does not re-encode strictly held some.
INVALID_UTF8 = "invalid UTF-8 bytes in the record"
_SPACE = " \t\r\n"


@dataclass
class RawItem:
    """One entry of a record file: the decoded record, or why it could not be decoded (`raw` may still be set)."""

    index: int  # position among the file's entries (0-based); malformed entries count
    line: int | None  # 1-based line where the entry starts (None for parquet)
    raw: Any = None
    error: str | None = None
    fatal: bool = False  # nothing after it can be read
    offset: int = 0  # byte span of the entry in the file (JSON and JSONL), for random access
    size: int = 0


class _Decoder:
    """json's C decoder, plus flags for what it accepts but JSON is not: NaN / Infinity, undecodable bytes."""

    def __init__(self) -> None:
        self.constants: list[str] = []
        self.decoder = json.JSONDecoder(parse_constant=self._constant)

    def _constant(self, name: str) -> None:
        self.constants.append(name)

    def decode(self, text: str, pos: int) -> tuple[Any, int, str | None]:
        """(value, end, problem) of the value at `pos`; JSONDecodeError / RecursionError propagate."""
        self.constants.clear()
        raw, end = self.decoder.raw_decode(text, pos)
        if self.constants:
            return raw, end, f"{self.constants[0]} is not valid JSON (NaN and Infinity are a Python extension)"
        return raw, end, None


def decode_entry(data: bytes) -> Any:
    """One entry from its byte span as the streaming reader decodes it; ValueError when the bytes are not exactly
    one JSON value that reader would accept without a problem."""
    text = data.decode("utf-8", "surrogateescape")
    decoder = _Decoder()
    raw, end, problem = decoder.decode(text, 0)
    if problem is not None or text[end:].strip():
        raise ValueError(problem or "data after the value")
    return raw


def value_end(text: str, pos: int) -> int | None:
    """End of the array/object starting at `pos`, by bracket matching (no recursion); None if it does not close."""
    depth, i, n, in_string = 0, pos, len(text), False
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _encoding_problem(head: bytes) -> str | None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
        return "not UTF-8 (UTF-16/32 or binary content): record files must be UTF-8 text"
    return None


def iter_raw_records(path: str | Path, chunk_chars: int | None = None) -> Iterator[RawItem]:
    """Stream the entries of a .jsonl, .json (list) or .parquet file; problems come back as items."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise RecordFileError(str(path), f"unsupported suffix {path.suffix!r} (use .json, .jsonl or .parquet)")
    if not path.is_file():
        raise RecordFileError(str(path), "record file not found")
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    with path.open("rb") as probe:
        head = probe.read(64)
    problem = _encoding_problem(head)
    if problem:
        yield RawItem(0, 1, error=problem, fatal=True)
    elif path.suffix == ".jsonl":
        yield from _iter_jsonl(path, head.startswith(codecs.BOM_UTF8))
    elif head:  # a zero-byte file holds no records, as an empty list does
        yield from _iter_json_list(path, chunk_chars or CHUNK_CHARS, 3 if head.startswith(codecs.BOM_UTF8) else 0)


def _iter_jsonl(path: Path, bom: bool) -> Iterator[RawItem]:
    decoder = _Decoder()
    offset, index = 0, 0
    with path.open("rb") as f:
        for line_no, data in enumerate(f, 1):
            start, body = offset, data
            offset += len(data)
            if line_no == 1 and bom:
                start, body = start + 3, data[3:]
            try:
                text, undecodable = body.decode("utf-8"), False
            except UnicodeDecodeError:
                text, undecodable = body.decode("utf-8", "surrogateescape"), True
            text = text.strip(_SPACE)
            if not text:
                continue
            item = RawItem(index, line_no, offset=start, size=len(body))
            try:
                item.raw, end, item.error = decoder.decode(text, 0)
                item.error = INVALID_UTF8 if undecodable else item.error
                if end != len(text):
                    item.raw, item.error = None, f"column {end + 1}: extra data after the record"
            except json.JSONDecodeError as exc:
                item.error = f"column {exc.colno}: {exc.msg}"
                if index == 0 and text.startswith("["):
                    item.error += " (a JSON list? name the file .json)"
            except RecursionError:
                item.error = "nested deeper than the JSON parser allows"
            yield item
            index += 1


def _iter_json_list(path: Path, chunk_chars: int, bom: int) -> Iterator[RawItem]:
    # json.load would hold the whole list (GBs for LLaVA's 665K); the stdlib has no streaming parser, so decode
    # one element at a time from a sliding buffer, counting lines and bytes (only ASCII whitespace is skipped
    # outside elements; an element's bytes are its text re-encoded). newline="" keeps CRLF byte-exact.
    decoder = _Decoder()
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        buf, pos, line, byte, index = "", 0, 1, bom, 0

        def fill() -> bool:
            nonlocal buf, pos
            more = f.read(chunk_chars)
            if more:
                buf, pos = buf[pos:] + more, 0
            return bool(more)

        def skip_space() -> None:
            nonlocal pos, line, byte
            while True:
                start = pos
                while pos < len(buf) and buf[pos] in _SPACE:
                    pos += 1
                line += buf.count("\n", start, pos)
                byte += pos - start
                if pos < len(buf) or not fill():
                    return

        def fatal(reason: str, at: int | None = None) -> RawItem:
            at_line = line if at is None else line + buf.count("\n", pos, at)
            column = (at if at is not None else pos) - buf.rfind("\n", 0, at if at is not None else pos)
            return RawItem(index, at_line, error=f"{reason} at line {at_line}, column {column}", fatal=True)

        skip_space()
        if buf[pos:pos + 1] != "[":
            hint = (", not an object (JSON Lines, one record a line, go in a file named .jsonl)"
                    if buf[pos:pos + 1] == "{" else "")
            yield fatal("a .json record file must hold a JSON list" + hint)
            return
        pos += 1
        byte += 1
        while True:
            skip_space()
            if buf[pos:pos + 1] == "]":
                pos += 1
                skip_space()
                if pos < len(buf):
                    yield fatal("data after the closing ']' of the list")
                return
            if pos >= len(buf):
                yield fatal("unexpected end of file: the list is not closed")
                return
            while True:
                try:
                    raw, end, problem = decoder.decode(buf, pos)
                    if end < len(buf) or not fill():  # a number could go on in the next chunk
                        break
                except json.JSONDecodeError as exc:
                    if len(buf) - pos <= MAX_RECORD_CHARS and fill():
                        continue
                    yield fatal(f"malformed JSON ({exc.msg})", exc.pos)
                    return
                except RecursionError:
                    end = value_end(buf, pos)
                    if end is None:
                        if len(buf) - pos <= MAX_RECORD_CHARS and fill():
                            continue
                        yield fatal("unexpected end of file inside a deeply nested record")
                        return
                    raw, problem = None, "nested deeper than the JSON parser allows"
                    break
            try:
                size = len(buf[pos:end].encode("utf-8"))
            except UnicodeEncodeError:
                size, problem = len(buf[pos:end].encode("utf-8", "surrogateescape")), INVALID_UTF8
            yield RawItem(index, line, raw=raw, error=problem, offset=byte, size=size)
            index += 1
            line += buf.count("\n", pos, end)
            byte += size
            pos = end
            skip_space()
            if buf[pos:pos + 1] == ",":
                pos += 1
                byte += 1
            elif buf[pos:pos + 1] != "]":
                yield fatal("expected ',' or ']' after a record" if pos < len(buf)
                            else "unexpected end of file: the list is not closed")
                return


def _iter_parquet(path: Path) -> Iterator[RawItem]:
    import pyarrow.parquet as pq  # installed with datasets

    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
            for row in batch.to_pylist():
                yield RawItem(index, None, raw={k: v for k, v in row.items() if v is not None})
                index += 1
    except Exception as exc:  # pyarrow raises its own error types (ArrowInvalid, OSError) for broken files
        yield RawItem(index, None, error=f"not a readable parquet file ({type(exc).__name__}: {exc})", fatal=True)


def entry_name(path: str | Path, item: RawItem) -> str:
    """Where an entry is, for messages: `FILE line N` (or `FILE record #N` for parquet)."""
    name = Path(path).name
    return f"{name} line {item.line}" if item.line is not None else f"{name} record #{item.index}"
