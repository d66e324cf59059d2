"""`Batch`: the one typed micro-batch that flows collator -> training loop -> model call, and prompts -> generation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from conversation.tokenize import IGNORE_INDEX


@dataclass
class Batch:
    """Right-padded training samples (the collator) or left-padded prompts (generation, eval, chat).

    Images of all samples are stacked in order of appearance; `image_counts[b]` says how many belong to
    sample b. In feature-cache mode the collator leaves `pixel_values` None and gives `image_keys` only.
    A plain dataclass of tensors and lists, so DataLoader worker processes pickle it.
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 on real tokens
    labels: torch.Tensor | None = None  # [B, L], IGNORE_INDEX where not supervised (unshifted)
    image_counts: torch.Tensor | None = None  # LongTensor[B]; None: no images (filled with zeros)
    pixel_values: torch.Tensor | None = None  # [N, 3, S, S]
    image_keys: list[str] = field(default_factory=list)  # [N] resolved image paths (feature cache keys)
    ids: list[str] = field(default_factory=list)  # [B] record ids
    skipped: list[tuple[str, str]] = field(default_factory=list)  # records dropped from this batch: (id, reason)
    position_ids: torch.Tensor | None = None  # [B, L], packing: positions restart per sample
    sample_lengths: list[list[int]] | None = None  # packing: per row, the lengths of the samples packed in it
    # packing: per row, the image count of each of its samples (`ids` and `image_keys` follow samples in row order;
    # `image_counts` stays per row, as the model splices images row by row)
    sample_image_counts: list[list[int]] | None = None
    image_sizes: list[tuple[int, int]] | None = None  # [N] dynamic resolution: (height, width) per image
    image_tiles: list[int] | None = None  # [N] anyres: tiles per image; pixel_values then holds sum(image_tiles) tiles
    # preference pairs (`prefer` recipe): rows [0, n) are the records' chosen replies, rows [n, 2n) the rejected ones
    # of the same records in the same order; `reference_logps[b]`: the reference model's reply log-prob of row b
    preference: bool = False
    reference_logps: torch.Tensor | None = None  # [B] float64

    def __post_init__(self) -> None:
        if self.image_counts is None:
            if self.pixel_values is not None or self.image_keys:
                raise ValueError("a Batch with images needs image_counts (images per sample)")
            self.image_counts = torch.zeros(self.input_ids.shape[0], dtype=torch.long)

    @property
    def num_rows(self) -> int:
        """Rows of the batch: one per record, or (packed) one per row of several records."""
        return int(self.input_ids.shape[0])

    @property
    def num_records(self) -> int:
        """Records (samples) in the batch: `num_rows` unless packed, where each row holds several, or preference
        pairs, where each record has two rows."""
        if self.preference:
            return self.num_rows // 2
        if self.sample_lengths is None:
            return self.num_rows
        return sum(len(row) for row in self.sample_lengths)

    @property
    def packed(self) -> bool:
        return self.sample_lengths is not None

    @classmethod
    def empty(cls, pad_token_id: int) -> "Batch":
        """One unsupervised pad token: the loop's zero-loss batch for a rank whose micro-batch was all skipped."""
        one = torch.full((1, 1), int(pad_token_id), dtype=torch.long)
        return cls(one, torch.ones_like(one), labels=torch.full_like(one, IGNORE_INDEX))

    def supervised_tokens(self) -> int:
        """Positions that contribute to the next-token loss (labels shifted by one)."""
        if self.labels is None:
            return 0
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on `device` (lists are shared)."""
        moved = {f.name: value.to(device, non_blocking=non_blocking)
                 for f in dataclasses.fields(self) if torch.is_tensor(value := getattr(self, f.name))}
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> "Batch":
        """Called by `DataLoader(pin_memory=True)` on each batch."""
        pinned = {f.name: value.pin_memory()
                  for f in dataclasses.fields(self) if torch.is_tensor(value := getattr(self, f.name))}
        return dataclasses.replace(self, **pinned)

    def image_owners(self) -> list[int]:
        """For each image, in order, the index of the row it belongs to."""
        return [i for i, n in enumerate(self.image_counts.tolist()) for _ in range(n)]

    def record_image_owners(self) -> list[int]:
        """For each image, in order, the index (into `ids`) of the record it belongs to, packed or not."""
        if self.sample_image_counts is None:
            return self.image_owners()
        counts = [n for row in self.sample_image_counts for n in row]
        return [i for i, n in enumerate(counts) for _ in range(n)]

    def without_records(self, drop: Sequence[int], pad_token_id: int) -> "Batch":
        """This batch less the records at `drop` (indices into `ids`) and their images. Unpacked, their rows go;
        packed, a row loses only those records' spans (its other records move left, the row is re-padded) and a
        row left empty goes. Labels need no change: a record's first label is already never a target."""
        dropped = set(drop)
        if self.sample_lengths is None:
            return self.select([i for i in range(self.num_rows) if i not in dropped])
        assert self.sample_image_counts is not None and self.position_ids is not None
        spans: list[list[tuple[int, int]]] = []  # per kept row: (start, length) of its kept records
        lengths: list[list[int]] = []
        image_counts: list[list[int]] = []
        kept_rows: list[int] = []
        kept_images: list[int] = []
        record = image = 0
        for row, (row_lengths, row_images) in enumerate(zip(self.sample_lengths, self.sample_image_counts)):
            start, row_spans, row_kept, row_kept_images = 0, [], [], []
            for length, count in zip(row_lengths, row_images):
                if record not in dropped:
                    row_spans.append((start, length))
                    row_kept.append(length)
                    row_kept_images.append(count)
                    kept_images.extend(range(image, image + count))
                record, image, start = record + 1, image + count, start + length
            if row_spans:
                kept_rows.append(row)
                spans.append(row_spans)
                lengths.append(row_kept)
                image_counts.append(row_kept_images)
        width = max((sum(row) for row in lengths), default=0)
        input_ids = torch.full((len(spans), width), int(pad_token_id), dtype=self.input_ids.dtype)
        labels = torch.full((len(spans), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(spans), width), dtype=self.attention_mask.dtype)
        position_ids = torch.zeros((len(spans), width), dtype=self.position_ids.dtype)
        for out, (row, row_spans) in enumerate(zip(kept_rows, spans)):
            at = 0
            for start, length in row_spans:
                input_ids[out, at:at + length] = self.input_ids[row, start:start + length]
                if self.labels is not None:
                    labels[out, at:at + length] = self.labels[row, start:start + length]
                position_ids[out, at:at + length] = self.position_ids[row, start:start + length]
                at += length
            attention_mask[out, :at] = 1
            position_ids[out, at:] = torch.arange(width - at)  # the padding tail counts from 0, as collated
        return dataclasses.replace(
            self, input_ids=input_ids, attention_mask=attention_mask,
            labels=labels if self.labels is not None else None, position_ids=position_ids,
            image_counts=torch.tensor([sum(row) for row in image_counts], dtype=torch.long),
            pixel_values=self._image_pixels(kept_images),
            image_keys=[self.image_keys[j] for j in kept_images] if self.image_keys else [],
            ids=[rid for i, rid in enumerate(self.ids) if i not in dropped],
            sample_lengths=lengths, sample_image_counts=image_counts,
            image_sizes=None if self.image_sizes is None else [self.image_sizes[j] for j in kept_images],
            image_tiles=None if self.image_tiles is None else [self.image_tiles[j] for j in kept_images])

    def _image_pixels(self, images: list[int]) -> torch.Tensor | None:
        """`pixel_values` of the images at `images` (anyres: each image's run of tiles); None when none is left."""
        if self.pixel_values is None or not images:
            return None
        rows = images
        if self.image_tiles is not None:
            starts = [sum(self.image_tiles[:j]) for j in range(len(self.image_tiles))]
            rows = [starts[j] + t for j in images for t in range(self.image_tiles[j])]
        return self.pixel_values[rows]

    def select(self, keep: Sequence[int]) -> "Batch":
        """The rows at `keep`, in that order; images follow their rows; padding is kept. (A packed row goes whole,
        with the ids of its records; `without_records` takes records out of rows.)"""
        keep = list(keep)
        owners = self.image_owners()
        images = [j for i in keep for j, owner in enumerate(owners) if owner == i]
        rows = torch.as_tensor(keep, dtype=torch.long)

        def pick_rows(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[rows]

        return dataclasses.replace(
            self,
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            labels=pick_rows(self.labels),
            image_counts=self.image_counts[rows],
            pixel_values=self._image_pixels(images),
            image_keys=[self.image_keys[j] for j in images] if self.image_keys else [],
            ids=self._row_ids(keep),
            position_ids=pick_rows(self.position_ids),
            sample_lengths=None if self.sample_lengths is None else [self.sample_lengths[i] for i in keep],
            sample_image_counts=(None if self.sample_image_counts is None
                                 else [self.sample_image_counts[i] for i in keep]),
            image_sizes=None if self.image_sizes is None else [self.image_sizes[j] for j in images],
            image_tiles=None if self.image_tiles is None else [self.image_tiles[j] for j in images],
            reference_logps=pick_rows(self.reference_logps),
        )

    def _row_ids(self, keep: list[int]) -> list[str]:
        if not self.ids:
            return []
        if self.sample_lengths is None or len(self.ids) == self.num_rows:
            return [self.ids[i] for i in keep]
        starts = [0]  # packed, one id per sample: row r holds ids[starts[r]:starts[r + 1]]
        for row in self.sample_lengths:
            starts.append(starts[-1] + len(row))
        return [self.ids[k] for i in keep for k in range(starts[i], starts[i + 1])]
