"""The training dataset: lazy parse -> template -> tokenize -> image load per item, bad records skipped and counted."""
from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from instruct_data.collate import Skipped
from conversation.errors import ImageLoadError, RecordError
from instruct_data.sources import RecordSource
from conversation.templates import Template, get_template
from conversation.tokenize import tokenize_conversation
from vlm.batch import Batch

ImageProcessorFn = Callable[[Image.Image], torch.Tensor]
TokenCounter = Callable[[tuple[int, int]], int]  # anyres: an image's (height, width) -> its number of image tokens
TYPICAL_SIZE = (1000, 1000)  # anyres length estimate per image before any record is calibrated
TOKENS_PER_WORD = 1.5  # fallback for length estimates before a record is tokenized (calibrated when possible)
TEMPLATE_OVERHEAD = 8  # role markers per turn, same purpose
CALIBRATION_RECORDS = 64
LOGGED_SKIPS = 3  # skips logged as warnings per reason kind and process; the rest counted (debug level)
log = logging.getLogger(__name__)


@dataclass
class SkipLog:
    """Skipped records (id, reason); gathered from worker batches via `add_batch`."""

    entries: list[tuple[str, str]] = field(default_factory=list)
    logged: Counter = field(default_factory=Counter)  # reason kind -> skips seen by `add` (for the log only)

    def add(self, record_id: str, reason: str) -> None:
        """Record a skip; the first few of each kind are logged, the rest only counted (one line says so)."""
        kind = reason.split(":", 1)[0]
        self.logged[kind] += 1
        seen = self.logged[kind]
        if seen <= LOGGED_SKIPS:
            log.warning("skipping record %r: %s", record_id, reason)
            if seen == LOGGED_SKIPS:
                log.warning("further %r skips are counted, not logged one by one (the run's summary has the count)",
                            kind)
        else:
            log.debug("skipping record %r: %s", record_id, reason)
        self.entries.append((record_id, reason))

    def add_batch(self, batch: Batch) -> None:
        self.entries.extend(tuple(x) for x in batch.skipped)

    def __len__(self) -> int:
        return len(self.entries)

    def by_reason(self) -> Counter:
        """Counts by reason kind (the text before the first ':'), for an end-of-epoch summary."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.entries)

    def summary(self) -> str:
        if not self.entries:
            return "skipped 0 records"
        kinds = ", ".join(f"{n} {k}" for k, n in self.by_reason().most_common())
        return f"skipped {len(self.entries)} records ({kinds}); first: {self.entries[0][0]!r}: {self.entries[0][1]}"


def skip_reason(exc: RecordError | ImageLoadError) -> str:
    """`<kind>: <details>`, kind one of record / max_length / image, so summaries can count by kind."""
    if isinstance(exc, ImageLoadError):
        return f"image: {exc}"
    if exc.field == "max_length":
        return f"max_length: {exc.reason}"
    return f"record: {exc.field}: {exc.reason}"


def _default_image_fns() -> tuple[Callable, Callable]:
    from conversation.images import load_image, resolve_image_path

    return resolve_image_path, load_image


def _header_size(path: Path) -> tuple[int, int]:
    from conversation.images import image_size

    return image_size(path)


class InstructDataset(Dataset):
    """Map-style dataset over a RecordSource; an item is a dict (see docs/architecture.md) or a `Skipped`.

    `num_image_tokens`: K, or (anyres) a function of an image's (height, width) giving its exact count; the
    size is read from the file's header before tokenization, and items then carry `image_sizes`.
    """

    def __init__(
        self,
        records: RecordSource,
        template: str | Template,
        tokenizer: Any,
        *,
        image_token_id: int,
        num_image_tokens: int | TokenCounter,
        image_processor: ImageProcessorFn | None = None,
        image_roots: Sequence[str | Path] = (),
        max_length: int | None = None,
        strict: bool = False,
        resolve_image: Callable[[str, list[Path]], Path] | None = None,
        load_image: Callable[[Path], Image.Image] | None = None,
        load_pixels: bool = True,
    ) -> None:
        self.records = records
        self.template = get_template(template)
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.image_processor = image_processor
        self.extra_roots = [Path(r) for r in image_roots]
        self.max_length = max_length
        self.strict = strict
        self._resolve, self._load = resolve_image, load_image
        self.load_pixels = load_pixels  # False: resolve paths only (features come from a cache keyed by path)
        self.count_tokens: TokenCounter | None = None if isinstance(num_image_tokens, int) else num_image_tokens
        if self.count_tokens is not None and not load_pixels:
            raise ValueError("anyres images are tiled per image size: the feature cache (load_pixels=False) "
                             "holds one feature map per image and cannot serve them; disable the feature cache")
        self._per_image: float | None = None  # anyres: mean image tokens per image, from calibration
        self.skip_log = SkipLog()  # this process only; the batch's `skipped` carries workers' skips
        self._exact = np.full(len(records), -1, dtype=np.int32)  # fixed size: memory flat in records seen
        self._fit: tuple[float, float] | None = None  # (tokens per word, tokens per record) for estimates

    def __len__(self) -> int:
        return len(self.records)

    def _roots(self, i: int) -> list[Path]:
        return list(self.records.image_roots(i)) + self.extra_roots

    def _paths(self, refs: list[str], roots: list[Path]) -> list[Path]:
        if not refs:
            return []
        if self._resolve is None or self._load is None:
            resolve, load = _default_image_fns()
            check = getattr(self.image_processor, "size_problem", None)  # extreme aspect ratios, before decoding
            self._resolve = self._resolve or resolve
            self._load = self._load or functools.partial(load, check_size=check)
        if not roots:
            raise ImageLoadError(refs[0], "no image root configured for this record")
        return [self._resolve(ref, roots) for ref in refs]

    def _images(
        self, paths: list[Path], sizes: list[tuple[int, int]] | None
    ) -> tuple[torch.Tensor | None, list[str], list[int]]:
        """Pixels [n, 3, S, S] (anyres: every image's tiles, concatenated), the image keys, tiles per image."""
        keys = [str(p) for p in paths]
        if not paths:
            return None, [], []
        if self.image_processor is None and self.load_pixels:
            raise ValueError("records with images need an image_processor (or load_pixels=False)")
        if not self.load_pixels:
            return None, keys, [1] * len(keys)
        if sizes is None:
            return torch.stack([self.image_processor(self._load(p)) for p in paths]), keys, [1] * len(keys)
        tiles: list[torch.Tensor] = []
        for path, size in zip(paths, sizes):
            pixels, seen = self.image_processor.process(self._load(path))  # type: ignore[attr-defined]
            if tuple(seen) != tuple(size):
                raise ImageLoadError(str(path), f"undecodable: the header says {size[0]}x{size[1]} (h x w) but the "
                                                f"decoded image is {seen[0]}x{seen[1]}; its token count would be wrong")
            tiles.append(pixels)
        return torch.cat(tiles), keys, [int(t.shape[0]) for t in tiles]

    def _image_tokens(self, paths: list[Path]) -> tuple[int | list[int], list[tuple[int, int]] | None]:
        """K, or (anyres) each image's own count from its header size, plus the sizes."""
        if self.count_tokens is None:
            return self.num_image_tokens, None  # type: ignore[return-value]
        sizes = [_header_size(p) for p in paths]
        return [self.count_tokens(size) for size in sizes], sizes

    def __getitem__(self, i: int) -> dict[str, Any] | Skipped:
        rid = f"#{i}"
        sizes: list[tuple[int, int]] | None = None
        try:
            conv = self.records.conversation(i)
            rid = conv.id
            paths = self._paths(conv.images, self._roots(i)) if self.count_tokens is not None else None
            counts, sizes = self._image_tokens(paths) if paths is not None else (self.num_image_tokens, None)
            sample = tokenize_conversation(
                conv,
                self.template,
                self.tokenizer,
                image_token_id=self.image_token_id,
                num_image_tokens=counts,
                max_length=self.max_length,
            )
            self._exact[i] = len(sample.input_ids)
            if paths is None:
                paths = self._paths(conv.images, self._roots(i))
            pixel_values, keys, tiles = self._images(paths, sizes)
        except (RecordError, ImageLoadError) as exc:
            if self.strict:
                raise
            reason = skip_reason(exc)
            rid = exc.record_id if isinstance(exc, RecordError) else rid
            self.skip_log.add(rid, reason)
            return Skipped(rid, reason)
        item = {
            "id": conv.id,
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "image_keys": keys,
            "source": self.records.source_name(i),
        }
        if sizes is not None:
            item["image_sizes"] = [tuple(size) for size in sizes]
            item["image_tiles"] = tiles
        return item

    def _tokenized_length(self, i: int) -> tuple[int, int] | None:
        """(tokens, image tokens) of record i, tokenized without loading pixels; None if it would be skipped."""
        try:
            conv = self.records.conversation(i)
            counts: int | list[int] = self.num_image_tokens  # type: ignore[assignment]
            if self.count_tokens is not None:
                counts, _ = self._image_tokens(self._paths(conv.images, self._roots(i)))
            sample = tokenize_conversation(conv, self.template, self.tokenizer,
                                           image_token_id=self.image_token_id, num_image_tokens=counts)
        except (RecordError, ImageLoadError):
            return None
        image_tokens = counts * len(conv.images) if isinstance(counts, int) else sum(counts)
        return len(sample.input_ids), image_tokens

    def _image_tokens_estimate(self) -> float:
        if self.count_tokens is None:
            return float(self.num_image_tokens)  # type: ignore[arg-type]
        return self._per_image if self._per_image is not None else float(self.count_tokens(TYPICAL_SIZE))

    def calibrate(self, n: int = CALIBRATION_RECORDS) -> tuple[float, float]:
        """Fit text tokens ~ a * words + b on up to n evenly spaced records (tokenized, no images loaded)."""
        xs, ys = [], []
        image_tokens, images = 0, 0
        for i in np.linspace(0, len(self) - 1, num=min(n, len(self)), dtype=int):
            found = self._tokenized_length(int(i))
            if found is not None:
                words, n_images = self.records.stats(int(i))
                xs.append(words)
                ys.append(found[0] - found[1])
                image_tokens, images = image_tokens + found[1], images + n_images
        if self.count_tokens is not None and images:
            self._per_image = image_tokens / images
        if len(xs) >= 2 and np.ptp(xs) > 0:
            a, b = np.polyfit(xs, ys, 1)
            self._fit = (float(max(a, 0.1)), float(max(b, 0.0)))
        else:
            self._fit = (TOKENS_PER_WORD, float(TEMPLATE_OVERHEAD))
        return self._fit

    def _estimate(self, i: int) -> tuple[int, int]:
        exact = int(self._exact[i])
        words, n_images = self.records.stats(i)
        if exact < 0:
            if self._fit is None:
                self.calibrate()
            a, b = self._fit
            exact = int(a * words + b) + int(n_images * self._image_tokens_estimate())
            if self.max_length is not None:
                exact = min(exact, self.max_length)
        return exact, n_images

    def tokenize_all(self) -> int:
        """Exact lengths for every record not yet measured: each is tokenized once, truncated as `__getitem__`
        would, no image decoded (anyres reads each image's header for its token count). A record that cannot be
        tokenized gets length 0 (it is skipped when read). Returns how many records were tokenized."""
        todo = np.flatnonzero(self._exact < 0)
        for i in todo:
            try:
                conv = self.records.conversation(int(i))
                counts: Any = self.num_image_tokens
                if self.count_tokens is not None:
                    counts, _ = self._image_tokens(self._paths(conv.images, self._roots(int(i))))
                sample = tokenize_conversation(conv, self.template, self.tokenizer, image_token_id=self.image_token_id,
                                               num_image_tokens=counts, max_length=self.max_length)
                self._exact[i] = len(sample.input_ids)
            except (RecordError, ImageLoadError):
                self._exact[i] = 0
        return len(todo)

    def lengths(self) -> list[int]:
        """Token length per record: exact once tokenized in this process, else a calibrated word-count estimate."""
        return [self._estimate(i)[0] for i in range(len(self))]

    def modality_lengths(self) -> list[int]:
        """Lengths signed by modality, as LLaVA: positive with images, negative for text-only records."""
        out = []
        for i in range(len(self)):
            n, n_images = self._estimate(i)
            out.append(n if n_images else -n)
        return out
