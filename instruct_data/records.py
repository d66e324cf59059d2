"""Conversation records: parsing LLaVA / OpenAI-style records and lazily indexed record files."""
from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from instruct_data.errors import RecordError

IMAGE_TOKEN = "<image>"
Role = Literal["system", "user", "assistant"]

_LLAVA_ROLES: dict[str, Role] = {"human": "user", "gpt": "assistant", "system": "system"}
_OPENAI_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system"}
JSON_CHUNK_CHARS = 1 << 20  # characters read at a time while indexing a JSON list
MAX_RECORD_CHARS = 1 << 26  # a JSON-list element longer than this is reported as malformed
_LLAVA_TURN_KEYS = frozenset({"from", "value"})
_OPENAI_TURN_KEYS = frozenset({"role", "content"})


@dataclass(frozen=True)
class Message:
    """One turn; `content` holds `<image>` placeholders where images go."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """A parsed record: alternating user/assistant messages (optional leading system) and image refs."""

    id: str
    messages: list[Message]
    images: list[str] = field(default_factory=list)


def _record_id(raw: Any, index: int) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), (str, int)) and not isinstance(raw.get("id"), bool):
        return str(raw["id"])
    return f"#{index}"


def _images_of(raw: dict, rid: str) -> list[str]:
    if "image" in raw and "images" in raw:
        raise RecordError(rid, "image", "both 'image' and 'images' given")
    key = "image" if "image" in raw else "images"
    value = raw.get(key)
    if value is None:
        return []
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.strip() for r in refs):
        raise RecordError(rid, key, "must be a non-empty string or a list of non-empty strings")
    return list(refs)


def _openai_content(content: Any, rid: str, where: str) -> tuple[str, list[str]]:
    """Flatten OpenAI content (str or list of text/image parts) to text with placeholders, plus inline refs."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RecordError(rid, where, f"content must be a string or a list of parts, got {type(content).__name__}")
    pieces: list[str] = []
    refs: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
            raise RecordError(rid, f"{where}[{j}]", "a part must be {'type': 'text'|'image', ...}")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise RecordError(rid, f"{where}[{j}].text", "text part without a string 'text'")
            pieces.append(part["text"])
        else:
            ref = part.get("image", part.get("path"))
            if ref is not None:
                if not isinstance(ref, str) or not ref.strip():
                    raise RecordError(rid, f"{where}[{j}].image", "image ref must be a non-empty string")
                refs.append(ref)
            pieces.append(IMAGE_TOKEN)
    return "\n".join(pieces), refs


def _turns(raw: dict, rid: str) -> tuple[list[Message], list[str]]:
    if "conversations" in raw and "messages" in raw:
        raise RecordError(rid, "conversations", "both 'conversations' and 'messages' given")
    if "conversations" in raw:
        key, role_key, text_key, roles, allowed = "conversations", "from", "value", _LLAVA_ROLES, _LLAVA_TURN_KEYS
    elif "messages" in raw:
        key, role_key, text_key, roles, allowed = "messages", "role", "content", _OPENAI_ROLES, _OPENAI_TURN_KEYS
    else:
        raise RecordError(rid, "conversations", "record has neither 'conversations' nor 'messages'")
    turns = raw[key]
    if not isinstance(turns, list) or not turns:
        raise RecordError(rid, key, "must be a non-empty list of turns")
    messages: list[Message] = []
    inline_refs: list[str] = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(rid, where, f"a turn must be an object, got {type(turn).__name__}")
        unknown = sorted(set(turn) - allowed)
        if unknown:
            raise RecordError(rid, where, f"unknown keys {unknown} (allowed: {sorted(allowed)})")
        role = roles.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise RecordError(rid, f"{where}.{role_key}", f"unknown role {turn.get(role_key)!r}; expected one of {sorted(roles)}")
        if key == "messages":
            text, refs = _openai_content(turn.get(text_key), rid, f"{where}.{text_key}")
            inline_refs.extend(refs)
        else:
            text = turn.get(text_key)
            if not isinstance(text, str):
                raise RecordError(rid, f"{where}.{text_key}", "turn text must be a string")
        if not text.strip():
            raise RecordError(rid, f"{where}.{text_key}", "empty turn")
        messages.append(Message(role, text))
    return messages, inline_refs


def _check_order(messages: list[Message], rid: str) -> None:
    body = messages[1:] if messages[0].role == "system" else messages
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg.role != expected:
            pos = i + (len(messages) - len(body))
            raise RecordError(rid, f"turn {pos}", f"role {msg.role!r} where {expected!r} was expected (roles must alternate user/assistant, starting with user)")
    if not body:
        raise RecordError(rid, "turn 0", "only a system message")
    if body[-1].role != "assistant":
        raise RecordError(rid, f"turn {len(messages) - 1}", "conversation ends with a user turn: no reply to learn")


def _place_images(messages: list[Message], n_images: int, rid: str) -> list[Message]:
    counts = [m.content.count(IMAGE_TOKEN) for m in messages]
    for i, (m, c) in enumerate(zip(messages, counts)):
        if c and m.role != "user":
            raise RecordError(rid, f"turn {i}", f"{IMAGE_TOKEN} in a {m.role} turn (images belong to user turns)")
    total = sum(counts)
    first_user = next(i for i, m in enumerate(messages) if m.role == "user")
    out = list(messages)
    if total == 0 and n_images > 0:
        # LLaVA prepends the placeholder when an image record has none; so do we, but only for one image.
        if n_images > 1:
            raise RecordError(rid, "image", f"{n_images} images but no {IMAGE_TOKEN} placeholder (several images need explicit placement)")
        out[first_user] = Message("user", f"{IMAGE_TOKEN}\n{messages[first_user].content.strip()}")
        return out
    if total != n_images:
        raise RecordError(rid, "image", f"{total} {IMAGE_TOKEN} placeholder(s) for {n_images} image(s)")
    if n_images == 1:
        # LLaVA's convention: the lone placeholder (and its adjoining newline) moves to the start of its turn.
        i = counts.index(1)
        rest = messages[i].content.replace(IMAGE_TOKEN, "").strip()
        out[i] = Message("user", f"{IMAGE_TOKEN}\n{rest}")
    return out


def parse_record(raw: dict, index: int) -> Conversation:
    """Parse one LLaVA (`conversations`) or OpenAI-style (`messages`) record; RecordError on anything wrong."""
    rid = _record_id(raw, index)
    if not isinstance(raw, dict):
        raise RecordError(rid, "record", f"must be a JSON object, got {type(raw).__name__}")
    messages, inline_refs = _turns(raw, rid)
    images = _images_of(raw, rid)
    if inline_refs:
        if images:
            raise RecordError(rid, "image", "images given both inline in content parts and in 'image'")
        images = inline_refs
    _check_order(messages, rid)
    return Conversation(rid, _place_images(messages, len(images), rid), images)


# ----------------------------------------------------------------------------------------------
# Record sources: random access to raw records without holding them all in memory.


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
