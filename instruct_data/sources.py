"""Record sources: random access to raw record files (.json, .jsonl, .parquet) without holding them in memory."""
from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any, Iterator, Sequence

from conversation.errors import RecordError
from conversation.records import Conversation, parse_record

JSON_CHUNK_CHARS = 1 << 20  # characters read at a time while indexing a JSON list
MAX_RECORD_CHARS = 1 << 26  # a JSON-list element longer than this is reported as malformed


def _stats(raw: Any) -> tuple[int, int]:
    """(word count, image count) of a raw record, for cheap length estimates; (0, 0) if unreadable."""
    if not isinstance(raw, dict):
        return 0, 0
    turns = raw.get("conversations", raw.get("messages"))
    words = 0
    if isinstance(turns, list):
        for t in turns:
            text = t.get("value", t.get("content")) if isinstance(t, dict) else None
            if isinstance(text, str):
                words += len(text.split())
            elif isinstance(text, list):
                words += sum(len(p.get("text", "").split()) for p in text if isinstance(p, dict) and isinstance(p.get("text"), str))
    img = raw.get("image", raw.get("images"))
    n_img = 1 if isinstance(img, str) else len(img) if isinstance(img, list) else 0
    return words, n_img


class RecordSource:
    """Random access to raw records of one or more files, each with its source name and image roots."""

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, i: int) -> Any:
        raise NotImplementedError

    def source_name(self, i: int) -> str:
        raise NotImplementedError

    def image_roots(self, i: int) -> list[Path]:
        raise NotImplementedError

    def stats(self, i: int) -> tuple[int, int]:
        """(word count, image count) recorded while indexing."""
        raise NotImplementedError

    def conversation(self, i: int) -> Conversation:
        return parse_record(self.raw(i), i)

    def __iter__(self) -> Iterator[Any]:
        return (self.raw(i) for i in range(len(self)))


class FileRecords(RecordSource):
    """One .json (list) or .jsonl file, indexed by byte offsets: memory is ~16 bytes per record."""

    def __init__(self, path: str | Path, image_roots: Sequence[str | Path] = (), name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.roots = [Path(r) for r in image_roots]
        self.offsets = array("q")
        self.sizes = array("l")
        self.words = array("l")
        self.n_images = array("l")
        self._fh = None
        self._pid = -1
        if self.path.suffix == ".jsonl":
            self._index_jsonl()
        elif self.path.suffix == ".json":
            self._index_json_list()
        else:
            raise ValueError(f"{self.path}: unsupported record file suffix {self.path.suffix!r} (use .json, .jsonl or .parquet)")

    def _add(self, offset: int, size: int, raw: Any) -> None:
        w, n = _stats(raw)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.words.append(w)
        self.n_images.append(n)

    def _index_jsonl(self) -> None:
        offset = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    try:
                        raw = json.loads(line)
                    except ValueError:
                        raw = None  # reported with its line when the record is read
                    self._add(offset, len(line), raw)
                offset += len(line)

    def _index_json_list(self, chunk_chars: int | None = None) -> None:
        # json.load would hold every record as Python objects (GBs for 665K); decode one element at a time.
        decoder = json.JSONDecoder()
        chunk_chars = chunk_chars or JSON_CHUNK_CHARS
        with open(self.path, "rb") as probe:
            bom = 3 if probe.read(3) == b"\xef\xbb\xbf" else 0
        with open(self.path, "r", encoding="utf-8-sig") as fh:
            buf = fh.read(chunk_chars)
            pos, byte_pos = 0, bom

            def skip(chars: str) -> None:
                nonlocal buf, pos, byte_pos
                while True:
                    while pos < len(buf) and buf[pos] in chars:
                        byte_pos += 1  # only ASCII whitespace is skipped
                        pos += 1
                    if pos < len(buf):
                        return
                    more = fh.read(chunk_chars)
                    if not more:
                        return
                    buf, pos = buf[pos:] + more, 0

            skip(" \t\r\n")
            if buf[pos:pos + 1] != "[":
                raise ValueError(f"{self.path}: a .json record file must hold a JSON list")
            pos += 1
            byte_pos += 1
            while True:
                skip(" \t\r\n")
                if buf[pos:pos + 1] == "]":
                    return
                while True:
                    try:
                        raw, end = decoder.raw_decode(buf, pos)
                        if end == len(buf):  # a number may continue in the next chunk
                            raise ValueError
                        break
                    except ValueError:
                        more = fh.read(chunk_chars)
                        if not more or len(buf) - pos > MAX_RECORD_CHARS:
                            raise ValueError(f"{self.path}: malformed JSON list at byte {byte_pos} (record #{len(self.offsets)})") from None
                        buf, pos = buf[pos:] + more, 0
                size = len(buf[pos:end].encode("utf-8"))
                self._add(byte_pos, size, raw)
                byte_pos += size
                pos = end
                skip(" \t\r\n")
                if buf[pos:pos + 1] == ",":
                    pos += 1
                    byte_pos += 1
                elif buf[pos:pos + 1] != "]":
                    raise ValueError(f"{self.path}: expected ',' or ']' at byte {byte_pos} (after record #{len(self.offsets) - 1})")

    def __len__(self) -> int:
        return len(self.offsets)

    def raw(self, i: int) -> Any:
        if self._fh is None or self._pid != os.getpid():  # one handle per DataLoader worker process
            self._fh = open(self.path, "rb")
            self._pid = os.getpid()
        self._fh.seek(self.offsets[i])
        data = self._fh.read(self.sizes[i])
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RecordError(f"#{i}", "json", f"{self.path.name} record {i}: malformed JSON ({exc})") from None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fh"], state["_pid"] = None, -1
        return state

    def source_name(self, i: int) -> str:
        return self.name

    def image_roots(self, i: int) -> list[Path]:
        return self.roots

    def stats(self, i: int) -> tuple[int, int]:
        return self.words[i], self.n_images[i]


class ParquetRecords(RecordSource):
    """A parquet file through `datasets` (memory-mapped Arrow, so rows stay on disk until read)."""

    def __init__(self, path: str | Path, image_roots: Sequence[str | Path] = (), name: str | None = None) -> None:
        import datasets

        self.path = Path(path)
        self.name = name or self.path.stem
        self.roots = [Path(r) for r in image_roots]
        self.table = datasets.Dataset.from_parquet(str(self.path))
        self._stats = [_stats(r) for r in self.table]

    def __len__(self) -> int:
        return len(self.table)

    def raw(self, i: int) -> Any:
        row = self.table[int(i)]
        return {k: v for k, v in row.items() if v is not None}  # Arrow fills absent keys with None

    def source_name(self, i: int) -> str:
        return self.name

    def image_roots(self, i: int) -> list[Path]:
        return self.roots

    def stats(self, i: int) -> tuple[int, int]:
        return self._stats[i]


class ConcatRecords(RecordSource):
    """Selected items of several sources, in a given order; item i is `(source, local index)`."""

    def __init__(self, sources: Sequence[RecordSource], items: Sequence[tuple[int, int]] | None = None) -> None:
        self.sources = list(sources)
        if items is None:
            items = [(s, j) for s, src in enumerate(self.sources) for j in range(len(src))]
        self.which = array("l", (s for s, _ in items))
        self.local = array("q", (j for _, j in items))

    def __len__(self) -> int:
        return len(self.which)

    def raw(self, i: int) -> Any:
        return self.sources[self.which[i]].raw(self.local[i])

    def conversation(self, i: int) -> Conversation:
        return self.sources[self.which[i]].conversation(self.local[i])

    def source_name(self, i: int) -> str:
        return self.sources[self.which[i]].source_name(self.local[i])

    def image_roots(self, i: int) -> list[Path]:
        return self.sources[self.which[i]].image_roots(self.local[i])

    def stats(self, i: int) -> tuple[int, int]:
        return self.sources[self.which[i]].stats(self.local[i])


def load_records(paths: str | Path | Sequence[str | Path], image_roots: Sequence[str | Path] = ()) -> RecordSource:
    """Index one or several .json/.jsonl/.parquet files lazily; every file shares `image_roots` (tried in order)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    sources: list[RecordSource] = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"record file not found: {p}")
        sources.append(ParquetRecords(p, image_roots) if p.suffix == ".parquet" else FileRecords(p, image_roots))
    return sources[0] if len(sources) == 1 else ConcatRecords(sources)


def _raw_stream(path: Path) -> Iterator[Any]:
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            for n, line in enumerate(fh):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as exc:
                        yield RecordError(f"#{n}", "json", f"{path.name} line {n + 1}: malformed JSON ({exc})")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq  # comes with `datasets`; reads one row group at a time

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield {k: v for k, v in row.items() if v is not None}
    else:
        yield from FileRecords(path)


def stream_records(paths: str | Path | Sequence[str | Path]) -> Iterator[Conversation | RecordError]:
    """Parse records one by one without an index (memory flat, one pass); bad ones come as RecordError."""
    files = [paths] if isinstance(paths, (str, Path)) else list(paths)
    i = 0
    for path in files:
        for raw in _raw_stream(Path(path)):
            if isinstance(raw, RecordError):
                yield raw
            else:
                try:
                    yield parse_record(raw, i)
                except RecordError as exc:
                    yield exc
            i += 1
