"""Record sources: random access to raw record files (.json, .jsonl, .parquet) without holding them in memory."""
from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any, Iterator, Sequence

from conversation.errors import RecordError, RecordFileError
from conversation.records import Conversation, parse_record
from instruct_data.record_files import entry_name, iter_raw_records


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
    """One .json (list) or .jsonl file, indexed by byte offsets: memory is ~20 bytes per record.

    A malformed JSONL line (or a bad element of a list that still parses as a list) stays an entry that raises
    RecordError naming its line when read, so it is skipped and counted like any bad record. A .json list that
    cannot be read whole, or a file with no records, is a RecordFileError naming the file and position.
    """

    def __init__(self, path: str | Path, image_roots: Sequence[str | Path] = (), name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.roots = [Path(r) for r in image_roots]
        self.offsets = array("q")  # 8 + 3 x 4 = 20 bytes a record, in flat arrays (no Python object per record)
        self.sizes = array("i")
        self.words = array("i")
        self.n_images = array("i")
        self.bad: dict[int, tuple[int | None, str]] = {}  # entry -> (line, why it cannot be read)
        self._fh = None
        self._pid = -1
        if self.path.suffix not in (".json", ".jsonl"):
            raise RecordFileError(str(self.path), f"unsupported record file suffix {self.path.suffix!r} "
                                                  "(use .json, .jsonl or .parquet)")
        for item in iter_raw_records(self.path):
            if item.fatal:
                why = ("a .json file must be one valid JSON list, so none of its records can be trusted and none "
                       "is used" if self.path.suffix == ".json" else "none of its records is used")
                raise RecordFileError(str(self.path), f"{item.error} (record #{item.index}); {why} "
                                                      "(`vlm data validate FILE` lists every problem)")
            if item.error is not None:
                self.bad[len(self.offsets)] = (item.line, item.error)
            self._add(item.offset, item.size, item.raw)
        if not self.offsets:
            what = "zero bytes" if not self.path.stat().st_size else "an empty list, or only blank lines"
            raise RecordFileError(str(self.path), f"no records in the file ({what})")

    def _add(self, offset: int, size: int, raw: Any) -> None:
        w, n = _stats(raw)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.words.append(w)
        self.n_images.append(n)

    def __len__(self) -> int:
        return len(self.offsets)

    def raw(self, i: int) -> Any:
        if i in self.bad:
            line, why = self.bad[i]
            raise RecordError(f"#{i}", "json", f"{self.path.name} line {line}: malformed JSON ({why})")
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
        try:
            self.table = datasets.Dataset.from_parquet(str(self.path))
        except Exception as exc:  # pyarrow / datasets raise their own types for a broken file
            raise RecordFileError(str(self.path), f"not a readable parquet file ({type(exc).__name__}: {exc})") from None
        if not len(self.table):
            raise RecordFileError(str(self.path), "no records in the file")
        stats = [_stats(r) for r in self.table]
        self._words = array("i", (w for w, _ in stats))  # flat arrays: no tuple per record kept
        self._images = array("i", (n for _, n in stats))

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
        return self._words[i], self._images[i]


class ConcatRecords(RecordSource):
    """Selected items of several sources, in a given order; item i is `(source, local index)`."""

    def __init__(self, sources: Sequence[RecordSource], items: Sequence[tuple[int, int]] | None = None) -> None:
        self.sources = list(sources)
        if items is None:
            items = [(s, j) for s, src in enumerate(self.sources) for j in range(len(src))]
        self.which = array("i", (s for s, _ in items))
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
            raise RecordFileError(str(p), "record file not found")
        sources.append(ParquetRecords(p, image_roots) if p.suffix == ".parquet" else FileRecords(p, image_roots))
    return sources[0] if len(sources) == 1 else ConcatRecords(sources)


def stream_records(paths: str | Path | Sequence[str | Path]) -> Iterator[Conversation | RecordError]:
    """Parse records one by one without an index (memory flat, one pass); bad ones come as RecordError."""
    files = [paths] if isinstance(paths, (str, Path)) else list(paths)
    i = 0
    for path in files:
        for item in iter_raw_records(path):
            if item.error is not None:
                yield RecordError(f"line {item.line}", "json", f"{entry_name(path, item)}: malformed JSON ({item.error})")
            else:
                try:
                    yield parse_record(item.raw, i)
                except RecordError as exc:
                    yield exc
            i += 1
