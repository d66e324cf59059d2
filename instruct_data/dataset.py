"""The training dataset: lazy parse -> template -> tokenize -> image load per item, bad records skipped and counted."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from conversation.errors import ImageLoadError, RecordError
from conversation.images import image_size, resolve_image_path
from conversation.records import Conversation
from conversation.templates import Template, get_template
from conversation.tokenize import TokenizedSample, tokenize_conversation
from instruct_data.item import Item, Skipped
from instruct_data.sources import RecordSource
from vision_encoders.preprocess import ImageProcessor
from vlm.batch import Batch
from vlm.inputs import ImageTokenCounter, Size, load_pixels, stack_pixels

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


class InstructDataset(Dataset):
    """Map-style dataset over a RecordSource; an item is an `Item` or a `Skipped`.

    `num_image_tokens`: the model's `ImageTokenCounter` (`vlm.inputs.image_token_counter`; K, or a function of an
    image's (height, width), is wrapped into one). When it counts per size (anyres), each image's size is read from
    its file's header before tokenization, and items then carry `image_sizes`. Pixels come from
    `vlm.inputs.load_pixels`, the processor's size check always on.
    """

    def __init__(
        self,
        records: RecordSource,
        template: str | Template,
        tokenizer: Any,
        *,
        image_token_id: int,
        num_image_tokens: ImageTokenCounter | int | Callable[[Size], int],
        image_processor: ImageProcessor | None = None,
        image_roots: Sequence[str | Path] = (),
        max_length: int | None = None,
        strict: bool = False,
        load_pixels: bool = True,
    ) -> None:
        self.records = records
        self.template = get_template(template)
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.count = ImageTokenCounter.of(num_image_tokens)
        self.image_processor = image_processor
        self.extra_roots = [Path(r) for r in image_roots]
        self.max_length = max_length
        self.strict = strict
        self.load_pixels = load_pixels  # False: resolve paths only (features come from a cache keyed by path)
        if self.count.needs_size and not load_pixels:
            raise ValueError("anyres images are tiled per image size: the feature cache (load_pixels=False) "
                             "holds one feature map per image and cannot serve them; disable the feature cache")
        self._per_image: float | None = None  # anyres: mean image tokens per image, from calibration
        self.skip_log = SkipLog()  # this process only; the batch's `skipped` carries workers' skips
        self._exact = np.full(len(records), -1, dtype=np.int32)  # fixed size: memory flat in records seen
        self._tiles: np.ndarray | None = None  # vision tiles per record, once measured with the exact lengths
        self._fit: tuple[float, float] | None = None  # (tokens per word, tokens per record) for estimates

    def __len__(self) -> int:
        return len(self.records)

    def _skipped(self, exc: RecordError | ImageLoadError, rid: str) -> Skipped:
        """A bad record (`rid`, or the id the error names) skipped and logged; under `strict` the error is raised."""
        if self.strict:
            raise exc
        reason = skip_reason(exc)
        rid = exc.record_id if isinstance(exc, RecordError) else rid
        self.skip_log.add(rid, reason)
        return Skipped(rid, reason)

    def _roots(self, i: int) -> list[Path]:
        # the record file's folder and `data.image_folder` are often the same: each root is searched (and named) once
        return list(dict.fromkeys([*self.records.image_roots(i), *self.extra_roots]))

    def _paths(self, refs: list[str], roots: list[Path]) -> list[Path]:
        if not refs:
            return []
        if not roots:
            raise ImageLoadError(refs[0], "no image root configured for this record")
        return [resolve_image_path(ref, roots) for ref in refs]

    def _tokenize(self, i: int, conv: Conversation, max_length: int | None
                  ) -> tuple[TokenizedSample, list[Path] | None, list[Size] | None]:
        """Record i tokenized (truncated to `max_length`), and with a per-size counter (anyres) its resolved image
        paths and header sizes, read first since the counts come from them; no pixel is decoded."""
        paths = sizes = None
        if self.count.needs_size:
            paths = self._paths(conv.images, self._roots(i))
            sizes = [image_size(p) for p in paths]
        sample = tokenize_conversation(conv, self.template, self.tokenizer, image_token_id=self.image_token_id,
                                       num_image_tokens=self.count.for_images(sizes), max_length=max_length)
        return sample, paths, sizes

    def _images(
        self, paths: list[Path], sizes: list[Size] | None
    ) -> tuple[torch.Tensor | None, list[str], list[int]]:
        """Pixels [n, 3, S, S] (anyres: every image's tiles, concatenated), the image keys, tiles per image."""
        keys = [str(p) for p in paths]
        if not paths:
            return None, [], []
        if not self.load_pixels:
            return None, keys, [1] * len(keys)
        if self.image_processor is None:
            raise ValueError("records with images need an image_processor (or load_pixels=False)")
        images = []
        for k, path in enumerate(paths):
            image = load_pixels(path, self.image_processor)
            if sizes is not None and image.size != tuple(sizes[k]):
                raise ImageLoadError(str(path), f"undecodable: the header says {sizes[k][0]}x{sizes[k][1]} (h x w) but "
                                                f"the decoded image is {image.size[0]}x{image.size[1]}; its token count "
                                                "would be wrong")
            images.append(image)
        return stack_pixels(images), keys, [int(image.values.shape[0]) for image in images]

    def __getitem__(self, i: int) -> Item | Skipped:
        rid = f"#{i}"
        try:
            conv = self.records.conversation(i)
            rid = conv.id
            sample, paths, sizes = self._tokenize(i, conv, self.max_length)
            self._exact[i] = len(sample.input_ids)
            if paths is None:
                paths = self._paths(conv.images, self._roots(i))
            pixel_values, keys, tiles = self._images(paths, sizes)
        except (RecordError, ImageLoadError) as exc:
            return self._skipped(exc, rid)
        return Item(conv.id, torch.tensor(sample.input_ids, dtype=torch.long),
                    torch.tensor(sample.labels, dtype=torch.long), pixel_values, keys,
                    image_sizes=None if sizes is None else [tuple(size) for size in sizes],
                    image_tiles=None if sizes is None else tiles)

    def _tokenized_length(self, i: int) -> tuple[int, int] | None:
        """(tokens, image tokens) of record i, tokenized without loading pixels; None if it would be skipped."""
        try:
            sample, _, _ = self._tokenize(i, self.records.conversation(i), max_length=None)
        except (RecordError, ImageLoadError):
            return None
        # untruncated, and text never yields the image token id (tokenization refuses it): every one is an image's
        return len(sample.input_ids), sample.input_ids.count(self.image_token_id)

    def _image_tokens_estimate(self) -> float:
        if not self.count.needs_size:
            return float(self.count())
        return self._per_image if self._per_image is not None else float(self.count(TYPICAL_SIZE))

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
        if self.count.needs_size and images:
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

    def exact_length(self, i: int) -> int:
        """Record i's length as `__getitem__` makes it (truncated to max_length), no image decoded (anyres reads
        each image's header for its token count); 0 for a record that cannot be tokenized (it is skipped when read)."""
        return self.exact_cost(i)[0]

    def exact_cost(self, i: int) -> tuple[int, int]:
        """(`exact_length`, the vision tower's tiles for the record's images): (0, 0) for a skipped record."""
        try:
            conv = self.records.conversation(int(i))
            sample, _, sizes = self._tokenize(int(i), conv, self.max_length)
        except (RecordError, ImageLoadError):
            return 0, 0
        return len(sample.input_ids), self.count.tiles(sizes, len(conv.images))

    def tokenize_all(self) -> int:
        """Exact lengths (`exact_length`) for every record not yet measured; returns how many were tokenized.
        `instruct_data.length_cache.exact_lengths` does the same in parallel and caches the result."""
        todo = np.flatnonzero(self._exact < 0)
        for i in todo:
            self._exact[i] = self.exact_length(int(i))
        return len(todo)

    def set_exact_lengths(self, lengths: Sequence[int] | np.ndarray, tiles: Sequence[int] | None = None) -> None:
        """Take every record's exact length (and vision tiles) from elsewhere (the length cache, other ranks)."""
        lengths = np.asarray(lengths, dtype=np.int32)
        if lengths.shape != self._exact.shape:
            raise ValueError(f"{lengths.shape[0]} lengths for {len(self)} records")
        self._exact[:] = lengths
        if tiles is not None:
            self._tiles = np.asarray(tiles, dtype=np.int32).copy()

    def tiles(self) -> list[int]:
        """Vision-tower tiles per record (what balancing ranks by cost weighs): exact once measured (the length
        cache), else one an image as indexed (anyres images count their tiles only once measured)."""
        if self._tiles is not None:
            return self._tiles.tolist()
        return [self.records.stats(i)[1] if self._exact[i] != 0 else 0 for i in range(len(self))]

    def lengths(self) -> list[int]:
        """Token length per record: exact once tokenized in this process, else a calibrated word-count estimate."""
        if len(self._exact) and self._exact.min() >= 0:  # all exact (tokenize_all, the length cache): no loop
            return self._exact.tolist()
        return [self._estimate(i)[0] for i in range(len(self))]

    def modality_lengths(self) -> list[int]:
        """Lengths signed by modality, as LLaVA: positive with images, negative for text-only records."""
        out = []
        for i in range(len(self)):
            n, n_images = self._estimate(i)
            out.append(n if n_images else -n)
        return out
