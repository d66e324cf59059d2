"""Preference records in training: tokenization (reply-only labels), dataset items and collation into one `Batch`."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conversation.errors import ImageLoadError, RecordError
from conversation.images import image_size
from conversation.records import Conversation
from conversation.templates import Template, render_spans
from conversation.tokenize import (
    IGNORE_INDEX,
    ImageTokens,
    TokenizedSample,
    check_no_special_text,
    spans_to_ids,
    truncate,
)
from instruct_data.collate import collate
from instruct_data.dataset import InstructDataset
from instruct_data.item import Item, Skipped
from instruct_data.preference_records import PreferencePair, parse_preference
from vlm.batch import Batch


def tokenize_reply(conv: Conversation, template: str | Template, tokenizer: Any, *, image_token_id: int,
                   num_image_tokens: ImageTokens, max_length: int | None = None) -> TokenizedSample:
    """As `tokenize_conversation`, but only the last reply (and its end-of-turn token, as the template supervises
    it) is labelled: earlier replies of a multi-turn prompt are context."""
    check_no_special_text(conv, tokenizer)
    spans = render_spans(conv.messages, template, tokenizer, record_id=conv.id)
    last = max((i for i, s in enumerate(spans) if s.supervised), default=-1)
    start = last
    while start > 0 and spans[start - 1].supervised:
        start -= 1
    spans = [dataclasses.replace(s, supervised=False) if i < start else s for i, s in enumerate(spans)]
    ids, labels, image_starts = spans_to_ids(spans, tokenizer, image_token_id=image_token_id,
                                             num_image_tokens=num_image_tokens, record_id=conv.id)
    if len(image_starts) != len(conv.images):
        raise RecordError(conv.id, "image", f"{len(image_starts)} image blocks rendered for {len(conv.images)} image(s)")
    if all(x == IGNORE_INDEX for x in labels):
        raise RecordError(conv.id, "labels", "no supervised token in the reply")
    if max_length is not None:
        ids, labels = truncate(ids, labels, image_starts, num_image_tokens, max_length, conv.id)
    return TokenizedSample(ids, labels, len(image_starts))


@dataclass
class PairItem:
    """A preference record as the dataset hands it to `PreferenceCollator`: two items sharing prompt and images."""

    id: str
    chosen: Item
    rejected: Item
    reference: tuple[float, float] | None = None  # the reference model's (chosen, rejected) reply log-probs

    @property
    def image_keys(self) -> list[str]:
        return self.chosen.image_keys


class PreferenceDataset(InstructDataset):
    """`InstructDataset` over preference records: an item is a `PairItem` (prompt + chosen, prompt + rejected, each
    labelled on its reply only) or a `Skipped`; a record's length is its longer side. `reference` ([N, 2] float64,
    set after the reference pre-pass) rides along with each item."""

    reference: np.ndarray | None = None

    def pair(self, i: int) -> PreferencePair:
        return parse_preference(self.records.raw(i), i)

    def _tokenize_pair(self, i: int, pair: PreferencePair, max_length: int | None
                       ) -> tuple[TokenizedSample, TokenizedSample, list[Path] | None, list[Any] | None]:
        paths = sizes = None
        if self.count.needs_size:
            paths = self._paths(pair.images, self._roots(i))
            sizes = [image_size(p) for p in paths]
        counts = self.count.for_images(sizes)
        chosen, rejected = (tokenize_reply(pair.conversation(which), self.template, self.tokenizer,
                                           image_token_id=self.image_token_id, num_image_tokens=counts,
                                           max_length=max_length) for which in ("chosen", "rejected"))
        return chosen, rejected, paths, sizes

    def __getitem__(self, i: int) -> PairItem | Skipped:  # type: ignore[override]
        rid = f"#{i}"
        try:
            pair = self.pair(i)
            rid = pair.id
            chosen, rejected, paths, sizes = self._tokenize_pair(i, pair, self.max_length)
            self._exact[i] = max(len(chosen.input_ids), len(rejected.input_ids))
            if paths is None:
                paths = self._paths(pair.images, self._roots(i))
            pixel_values, keys, tiles = self._images(paths, sizes)
        except (RecordError, ImageLoadError) as exc:
            return self._skipped(exc, rid)
        extra = dict(image_sizes=None if sizes is None else [tuple(size) for size in sizes],
                     image_tiles=None if sizes is None else tiles)
        items = [Item(pair.id, torch.tensor(s.input_ids, dtype=torch.long), torch.tensor(s.labels, dtype=torch.long),
                      pixel_values, keys, **extra) for s in (chosen, rejected)]
        reference = None if self.reference is None else (float(self.reference[i, 0]), float(self.reference[i, 1]))
        return PairItem(pair.id, items[0], items[1], reference)

    def _tokenized_length(self, i: int) -> tuple[int, int] | None:
        try:
            chosen, rejected, _, _ = self._tokenize_pair(i, self.pair(i), max_length=None)
        except (RecordError, ImageLoadError):
            return None
        longer = max(chosen, rejected, key=lambda s: len(s.input_ids))
        return len(longer.input_ids), longer.input_ids.count(self.image_token_id)

    def exact_length(self, i: int) -> int:
        try:
            chosen, rejected, _, _ = self._tokenize_pair(int(i), self.pair(int(i)), self.max_length)
        except (RecordError, ImageLoadError):
            return 0
        return max(len(chosen.input_ids), len(rejected.input_ids))


def collate_pairs(items: Sequence[PairItem | Skipped | None], pad_token_id: int) -> Batch:
    """One `Batch` of the pairs' chosen rows then their rejected rows (images repeated per row, as each row is a
    sequence of its own); `reference_logps` filled when every pair carries its reference."""
    pairs = [it for it in items if isinstance(it, PairItem)]
    others = [it for it in items if not isinstance(it, PairItem)]  # Skipped / None: listed in `skipped`
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs] + others, pad_token_id)
    reference = None
    if pairs and all(p.reference is not None for p in pairs):
        values = [p.reference[0] for p in pairs] + [p.reference[1] for p in pairs]  # type: ignore[index]
        reference = torch.tensor(values, dtype=torch.float64)
    return dataclasses.replace(batch, preference=True, reference_logps=reference)


class PreferenceCollator:
    """A picklable `collate_pairs` bound to a pad id (DataLoader worker processes)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[PairItem | Skipped | None]) -> Batch:
        return collate_pairs(items, self.pad_token_id)
