"""Validate a record file in one memory-flat pass: schema, roles, turns, placeholders, images, token lengths."""
from __future__ import annotations

import functools
import json
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from conversation.errors import RecordError
from conversation.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    extension_mismatch,
    image_size,
    load_image,
    reason_code,
    resolve_image_path,
)
from conversation.records import (
    IMAGE_TOKEN,
    TURN_FORMATS,
    Conversation,
    is_valid_unicode,
    parse_record,
    record_id,
)
from instruct_data.preference_records import is_preference_record, parse_preference
from instruct_data.record_files import RawItem, iter_raw_records
from conversation.tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    from vlm.inputs import ImageTokenCounter

__all__ = ["Problem", "ValidationConfig", "ValidationSummary", "RawItem", "iter_raw_records", "record_id",
           "classify_record", "RecordValidator", "validate_file"]


@dataclass
class Problem:
    """One finding: `reason` is a short category (counted in the summary), `detail` says exactly what."""

    record_id: str
    index: int  # the record's position in the file (0-based); malformed lines count as records
    field: str
    reason: str
    detail: str = ""
    severity: str = "error"  # "error" makes the record bad; "warning" does not
    line: int | None = None


@dataclass
class ValidationConfig:
    """What to check. Token checks run only when a tokenizer and template are given."""

    image_roots: list[Path]
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    decode_images: bool = True
    aspect_ratio: str = "pad"  # the training image processor's: flags images whose resize / canvas is too large
    image_size: int = 336
    tokenizer: Any = None
    template: Any = None
    # the model's `vlm.inputs.ImageTokenCounter` (K, or a picklable function of an image's (height, width), is wrapped)
    num_image_tokens: ImageTokenCounter | int | Callable[[tuple[int, int]], int] | None = None
    image_token_id: int | None = None
    max_length: int | None = None
    image_cache_size: int = 65536


@dataclass
class ValidationSummary:
    """Counts of one validation run; `bad_by_reason` counts records (once per distinct reason)."""

    records: int = 0
    ok: int = 0
    bad: int = 0
    warned: int = 0
    bad_by_reason: Counter = field(default_factory=Counter)
    warnings_by_reason: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # about the file as a whole (unreadable rest, no records)
    # image tokens per image, when token checks ran: count, sum, min, max (flat memory for any file size)
    images_counted: int = 0
    image_tokens_sum: int = 0
    image_tokens_min: int | None = None
    image_tokens_max: int | None = None

    @property
    def failed(self) -> bool:
        """Whether the file is not fit for training as it is: a bad record, or no record at all."""
        return bool(self.bad) or self.records == 0

    def add_tokens(self, counts: list[int]) -> None:
        if not counts:
            return
        self.images_counted += len(counts)
        self.image_tokens_sum += sum(counts)
        self.image_tokens_min = min(counts + ([self.image_tokens_min] if self.image_tokens_min is not None else []))
        self.image_tokens_max = max(counts + ([self.image_tokens_max] if self.image_tokens_max is not None else []))

    def add(self, problems: list[Problem]) -> None:
        self.records += 1
        errors = {p.reason for p in problems if p.severity == "error"}
        warnings = {p.reason for p in problems if p.severity == "warning"}
        self.bad += bool(errors)
        self.ok += not errors
        self.warned += bool(warnings)
        self.bad_by_reason.update(errors)
        self.warnings_by_reason.update(warnings)

    def table(self) -> str:
        rows = [("records", self.records), ("ok", self.ok), ("bad", self.bad), ("with warnings", self.warned)]
        lines = [f"{name:<34}{count:>10}" for name, count in rows]
        if self.images_counted:
            mean = self.image_tokens_sum / self.images_counted
            lines.append(f"image tokens per image: min {self.image_tokens_min}, mean {mean:.1f}, "
                         f"max {self.image_tokens_max} ({self.images_counted} images)")
        for title, counts in (("bad records by reason", self.bad_by_reason),
                              ("warnings by reason", self.warnings_by_reason)):
            if counts:
                lines.append(f"{title}:")
                lines += [f"  {reason:<32}{n:>10}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return "\n".join(lines + self.notes)


def classify_record(raw: Any) -> list[tuple[str, str, str]]:
    """Every structural problem of a raw record as (field, reason, detail): schema, roles, empty turns, placeholders.

    Used to name all problems by category once the parser (the authority on what is acceptable) rejected it.
    """
    if not isinstance(raw, dict):
        return [("record", "schema", f"a record must be a JSON object, got {type(raw).__name__}")]
    key = "conversations" if "conversations" in raw else "messages" if "messages" in raw else None
    if key is None:
        return [("conversations", "schema", "neither 'conversations' nor 'messages'")]
    turns = raw[key]
    if not isinstance(turns, list) or not turns:
        return [(key, "schema", "must be a non-empty list of turns")]
    fmt = TURN_FORMATS[key]
    role_key, text_key, roles = fmt.role_key, fmt.text_key, fmt.roles
    found: list[tuple[str, str, str]] = []
    sequence: list[str] = []
    placeholders: list[int] = []
    inline_images = 0  # OpenAI content parts may carry their image refs inline
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            found.append((where, "schema", f"a turn must be an object, got {type(turn).__name__}"))
            continue
        role = roles.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            found.append((f"{where}.{role_key}", "wrong roles", f"unknown role {turn.get(role_key)!r}"))
        sequence.append(role or "?")
        text = turn.get(text_key)
        if isinstance(text, list):  # OpenAI content parts
            parts = [p for p in text if isinstance(p, dict)]
            text = "\n".join(p["text"] for p in parts if isinstance(p.get("text"), str))
            n_placeholders = text.count(IMAGE_TOKEN) + sum(p.get("type") == "image" for p in parts)
            inline_images += sum(p.get("type") == "image" and ("image" in p or "path" in p) for p in parts)
        elif isinstance(text, str):
            n_placeholders = text.count(IMAGE_TOKEN)
        else:
            found.append((f"{where}.{text_key}", "schema", "turn text must be a string"))
            continue
        placeholders.append(n_placeholders)
        if not is_valid_unicode(text):
            found.append((f"{where}.{text_key}", "invalid unicode", "a lone surrogate (e.g. \\ud800) or invalid UTF-8"))
        if not text.strip() and not n_placeholders:
            found.append((f"{where}.{text_key}", "empty turn", "the turn has no text"))
        if n_placeholders and role not in ("user", None):
            found.append((f"{where}.{text_key}", "image placeholder count", f"{IMAGE_TOKEN} in a {role} turn"))
    body = sequence[1:] if sequence[:1] == ["system"] else sequence
    expected = ["user", "assistant"] * ((len(body) + 1) // 2)
    if "?" not in body and (body != expected[:len(body)] or not body or body[-1] != "assistant"):
        found.append((key, "wrong roles", f"roles {body} must alternate user/assistant from user and end with assistant"))
    images = raw.get("image", raw.get("images"))
    n_images = (1 if isinstance(images, str) else len(images) if isinstance(images, list) else 0) + inline_images
    if images is not None and not isinstance(images, (str, list)):
        found.append(("image", "schema", "must be a string or a list of strings"))
    refs = [images] if isinstance(images, str) else images if isinstance(images, list) else []
    if any(isinstance(r, str) and not is_valid_unicode(r) for r in refs):
        found.append(("image", "invalid unicode", "an image ref holds a lone surrogate or invalid UTF-8"))
    total = sum(placeholders)
    if total != n_images and not (total == 0 and n_images == 1):  # the parser places a lone image itself
        found.append(("image", "image placeholder count", f"{total} {IMAGE_TOKEN} placeholder(s) for {n_images} image(s)"))
    return found


def _raw_image_refs(raw: Any) -> list[tuple[str, str]]:
    """(field, ref) of the image refs a raw record names, for checking images even when it does not parse."""
    if not isinstance(raw, dict):
        return []
    key = "image" if "image" in raw else "images"
    value = raw.get(key)
    refs = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [(f"{key}[{i}]", r) for i, r in enumerate(refs) if isinstance(r, str)]


class RecordValidator:
    """Checks one record at a time; decoded-image verdicts are cached by resolved path (bounded LRU)."""

    def __init__(self, config: ValidationConfig) -> None:
        if not config.image_roots:
            raise ValueError("validation needs at least one image root (--image-folder)")
        if config.tokenizer is not None and (config.template is None or config.num_image_tokens is None
                                             or config.image_token_id is None):
            raise ValueError("token checks need the template, num_image_tokens and image_token_id with the tokenizer")
        self.config = config
        self._check_size = None
        if config.decode_images:
            from vision_encoders.preprocess import geometry_problem  # imports torch: only when decoding

            self._check_size = functools.partial(geometry_problem, aspect_ratio=config.aspect_ratio,
                                                 size=config.image_size)
        self._image_cache: OrderedDict[Path, tuple[str, str, str] | None] = OrderedDict()

    def check(self, item: RawItem) -> list[Problem]:
        """All problems of one raw item (an empty list when the record is fine)."""
        return self.check_counted(item)[0]

    def check_counted(self, item: RawItem) -> tuple[list[Problem], list[int]]:
        """(problems, image tokens of each of its images when token checks ran)."""
        self._counted: list[int] = []
        problems = self._check(item)
        return problems, self._counted

    def _check(self, item: RawItem) -> list[Problem]:
        if item.error is not None:
            has_id = isinstance(item.raw, dict) and "id" in item.raw
            rid = record_id(item.raw, item.index) if has_id else f"line {item.line}" if item.line else f"#{item.index}"
            detail = item.error + ("; the rest of the file cannot be read" if item.fatal else "")
            return [Problem(rid, item.index, "json", "malformed json", detail, line=item.line)]
        rid = record_id(item.raw, item.index)

        def problem(fld: str, reason: str, detail: str = "", severity: str = "error") -> Problem:
            return Problem(rid, item.index, fld, reason, detail, severity, item.line)

        problems: list[Problem] = []
        conv: Conversation | None = None
        sides: list[Conversation] = []  # what is tokenized: the record, or a preference pair's two sides
        pair = is_preference_record(item.raw)
        try:
            if pair:
                parsed = parse_preference(item.raw, item.index)
                sides = [parsed.conversation("chosen"), parsed.conversation("rejected")]
                conv = sides[0]
            else:
                conv = parse_record(item.raw, item.index)
                sides = [conv]
        except RecordError as exc:
            if pair:
                problems.append(problem(exc.field, "bad preference pair", exc.reason))
            else:
                found = classify_record(item.raw)
                problems += [problem(f, r, d) for f, r, d in found] or [problem(exc.field, "invalid record", exc.reason)]
        refs = [(f"image[{i}]", r) for i, r in enumerate(conv.images)] if conv else _raw_image_refs(item.raw)
        for fld, ref in refs:
            found_image = self._check_image(ref)
            if found_image is not None:
                reason, detail, severity = found_image
                problems.append(problem(fld, reason, f"{ref}: {detail}" if detail else ref, severity))
        if self.config.tokenizer is not None:
            for side in sides:
                problems += [problem(f, r, d, s) for f, r, d, s in self._check_tokens(side)]
        return problems

    def _check_image(self, ref: str) -> tuple[str, str, str] | None:
        """(reason, detail, severity) of the worst finding for one image ref, or None when it is fine."""
        try:
            path = resolve_image_path(ref, self.config.image_roots)
        except ImageLoadError as exc:
            return reason_code(exc.reason), exc.reason.partition(": ")[2], "error"
        if path in self._image_cache:
            self._image_cache.move_to_end(path)
            return self._image_cache[path]
        verdict: tuple[str, str, str] | None = None
        if self.config.decode_images:
            try:
                image = load_image(path, max_pixels=self.config.max_pixels, check_size=self._check_size)
                mismatch = extension_mismatch(path, image)
                image.close()
                if mismatch:
                    verdict = ("extension mismatch", mismatch, "warning")
            except ImageLoadError as exc:
                verdict = (reason_code(exc.reason), exc.reason.partition(": ")[2], "error")
        self._image_cache[path] = verdict
        if len(self._image_cache) > self.config.image_cache_size:
            self._image_cache.popitem(last=False)
        return verdict

    def _check_tokens(self, conv: Conversation) -> list[tuple[str, str, str, str]]:
        from conversation.tokenize import tokenize_conversation  # loaded only for token checks
        from vlm.inputs import ImageTokenCounter

        cfg = self.config
        count = ImageTokenCounter.of(cfg.num_image_tokens)  # type: ignore[arg-type]
        sizes = None
        if count.needs_size:  # anyres: each image's count from its header size
            try:
                sizes = [image_size(resolve_image_path(ref, cfg.image_roots), cfg.max_pixels) for ref in conv.images]
            except ImageLoadError:
                return []  # the image check reported it; no length can be known
        try:
            sample = tokenize_conversation(conv, cfg.template, cfg.tokenizer, image_token_id=cfg.image_token_id,
                                           num_image_tokens=count.for_images(sizes))
            self._counted = count.per_image(len(conv.images), sizes)
        except RecordError as exc:
            reason = "no supervised tokens" if exc.field == "labels" else "tokenization"
            return [(f"tokens.{exc.field}", reason, exc.reason, "error")]
        except ValueError as exc:
            return [("tokens", "tokenization", str(exc), "error")]
        ids, labels = list(sample.input_ids), list(sample.labels)
        if all(label == IGNORE_INDEX for label in labels):
            return [("tokens", "no supervised tokens", f"{len(ids)} tokens, none supervised", "error")]
        limit = cfg.max_length
        if limit is None or len(ids) <= limit:
            return []
        image_positions = [i for i, t in enumerate(ids) if t == cfg.image_token_id]
        if image_positions and image_positions[-1] >= limit:
            return [("tokens", "images beyond max length",
                     f"{len(ids)} tokens; the last image ends at {image_positions[-1] + 1} > {limit}", "error")]
        if all(label == IGNORE_INDEX for label in labels[:limit]):
            return [("tokens", "no supervised token within max length",
                     f"{len(ids)} tokens; nothing supervised in the first {limit}", "error")]
        return [("tokens", "will be truncated", f"{len(ids)} tokens > max length {limit}", "warning")]


_WORKER: RecordValidator | None = None


def _worker_init(config: ValidationConfig) -> None:
    global _WORKER
    _WORKER = RecordValidator(config)


def _worker_check(items: list[RawItem]) -> list[tuple[list[Problem], list[int]]]:
    assert _WORKER is not None
    return [_WORKER.check_counted(item) for item in items]


def _checked(items: Iterator[RawItem], config: ValidationConfig, workers: int,
             chunk: int = 64) -> Iterator[tuple[RawItem, tuple[list[Problem], list[int]]]]:
    """(item, (problems, image tokens)) in file order; with workers > 1 a bounded window of chunks runs elsewhere."""
    if workers <= 1:
        validator = RecordValidator(config)
        for item in items:
            yield item, validator.check_counted(item)
        return
    RecordValidator(config)  # fail here, not in a worker, on a bad config
    with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(config,)) as pool:
        pending: deque[tuple[list[RawItem], Future]] = deque()
        for batch in _batches(items, chunk):
            pending.append((batch, pool.submit(_worker_check, batch)))
            if len(pending) >= 2 * workers:  # bounded, so memory stays flat however large the file
                done, future = pending.popleft()
                yield from zip(done, future.result())
        while pending:
            done, future = pending.popleft()
            yield from zip(done, future.result())


def _batches(items: Iterator[RawItem], size: int) -> Iterator[list[RawItem]]:
    batch: list[RawItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def validate_file(path: str | Path, config: ValidationConfig, report: TextIO | None = None,
                  workers: int = 1, chunk_size: int = 64, progress: bool = False) -> ValidationSummary:
    """Check every record of `path`; problems go to `report` as JSONL as they are found; returns the counts.
    `progress`: a bar on stderr (a terminal only) counting the file's bytes."""
    import sys

    from tqdm import tqdm

    summary = ValidationSummary()
    first_seen: dict[str, tuple[int, int | None]] = {}  # record id -> (index, line) where it first appeared
    bar = tqdm(total=Path(path).stat().st_size, unit="B", unit_scale=True, desc="validate", file=sys.stderr,
               disable=None if progress else True)
    for item, (problems, image_tokens) in _checked(iter_raw_records(path), config, workers, chunk_size):
        bar.update(item.size)
        if item.fatal:
            summary.notes.append(f"{path}: {item.error}: the records after line {item.line} cannot be read, "
                                 f"and training refuses the whole file")
        rid = record_id(item.raw, item.index) if item.error is None else None
        if rid is not None and not rid.startswith("#"):
            if rid in first_seen:
                index, line = first_seen[rid]
                where = f"record #{index}" + (f" (line {line})" if line else "")
                problems.append(Problem(rid, item.index, "id", "duplicate id", f"also the id of {where}",
                                        "warning", item.line))
            else:
                first_seen[rid] = (item.index, item.line)
        summary.add(problems)
        summary.add_tokens(image_tokens)
        if report is not None:
            for p in problems:
                line = json.dumps(asdict(p), ensure_ascii=False)
                # a detail may quote a lone surrogate from the file: escape it rather than fail to write UTF-8
                report.write((line if is_valid_unicode(line) else json.dumps(asdict(p))) + "\n")
    bar.close()
    if summary.records == 0:
        summary.notes.append(f"no records in {path}" + (" (zero bytes)" if not Path(path).stat().st_size else ""))
    return summary
