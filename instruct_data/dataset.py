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


class InstructDataset(Dataset):
    """Map-style dataset over a RecordSource; an item is a dict (see docs/architecture.md) or a `Skipped`."""

    def __init__(
        self,
        records: RecordSource,
        template: str | Template,
        tokenizer: Any,
        *,
        image_token_id: int,
        num_image_tokens: int,
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
        self.skip_log = SkipLog()  # this process only; the batch's `skipped` carries workers' skips
        self._exact = np.full(len(records), -1, dtype=np.int32)  # fixed size: memory flat in records seen
        self._fit: tuple[float, float] | None = None  # (tokens per word, tokens per record) for estimates

    def __len__(self) -> int:
        return len(self.records)

    def _roots(self, i: int) -> list[Path]:
        return list(self.records.image_roots(i)) + self.extra_roots

    def _images(self, refs: list[str], roots: list[Path]) -> tuple[torch.Tensor | None, list[str]]:
        if not refs:
            return None, []
        if self.image_processor is None and self.load_pixels:
            raise ValueError("records with images need an image_processor (or load_pixels=False)")
        if self._resolve is None or self._load is None:
            resolve, load = _default_image_fns()
            check = getattr(self.image_processor, "size_problem", None)  # extreme aspect ratios, before decoding
            self._resolve = self._resolve or resolve
            self._load = self._load or functools.partial(load, check_size=check)
        if not roots:
            raise ImageLoadError(refs[0], "no image root configured for this record")
        paths = [self._resolve(ref, roots) for ref in refs]
        if not self.load_pixels:
            return None, [str(p) for p in paths]
        pixels = [self.image_processor(self._load(p)) for p in paths]
        return torch.stack(pixels), [str(p) for p in paths]

    def __getitem__(self, i: int) -> dict[str, Any] | Skipped:
        rid = f"#{i}"
        try:
            conv = self.records.conversation(i)
            rid = conv.id
            sample = tokenize_conversation(
                conv,
                self.template,
                self.tokenizer,
                image_token_id=self.image_token_id,
                num_image_tokens=self.num_image_tokens,
                max_length=self.max_length,
            )
            self._exact[i] = len(sample.input_ids)
            pixel_values, keys = self._images(conv.images, self._roots(i))
        except (RecordError, ImageLoadError) as exc:
            if self.strict:
                raise
            reason = skip_reason(exc)
            rid = exc.record_id if isinstance(exc, RecordError) else rid
            self.skip_log.add(rid, reason)
            return Skipped(rid, reason)
        return {
            "id": conv.id,
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "image_keys": keys,
            "source": self.records.source_name(i),
        }

    def _tokenized_length(self, i: int) -> int | None:
        try:
            sample = tokenize_conversation(self.records.conversation(i), self.template, self.tokenizer,
                                           image_token_id=self.image_token_id, num_image_tokens=self.num_image_tokens)
        except RecordError:
            return None
        return len(sample.input_ids)

    def calibrate(self, n: int = CALIBRATION_RECORDS) -> tuple[float, float]:
        """Fit text tokens ~ a * words + b on up to n evenly spaced records (tokenized, no images loaded)."""
        xs, ys = [], []
        for i in np.linspace(0, len(self) - 1, num=min(n, len(self)), dtype=int):
            length = self._tokenized_length(int(i))
            if length is not None:
                words, n_images = self.records.stats(int(i))
                xs.append(words)
                ys.append(length - n_images * self.num_image_tokens)
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
            exact = int(a * words + b) + n_images * self.num_image_tokens
            if self.max_length is not None:
                exact = min(exact, self.max_length)
        return exact, n_images

    def tokenize_all(self) -> int:
        """Exact lengths for every record not yet measured: each is tokenized once, truncated as `__getitem__`
        would, no image loaded. A record that cannot be tokenized gets length 0 (it is skipped when read).
        Returns how many records were tokenized."""
        todo = np.flatnonzero(self._exact < 0)
        for i in todo:
            try:
                conv = self.records.conversation(int(i))
                sample = tokenize_conversation(conv, self.template, self.tokenizer, image_token_id=self.image_token_id,
                                               num_image_tokens=self.num_image_tokens, max_length=self.max_length)
                self._exact[i] = len(sample.input_ids)
            except RecordError:
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
