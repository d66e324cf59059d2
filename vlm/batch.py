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

    def __post_init__(self) -> None:
        if self.image_counts is None:
            if self.pixel_values is not None or self.image_keys:
                raise ValueError("a Batch with images needs image_counts (images per sample)")
            self.image_counts = torch.zeros(self.input_ids.shape[0], dtype=torch.long)

    @property
    def num_samples(self) -> int:
        """Rows of the batch (packed: rows of several samples each; `ids` counts the samples)."""
        return int(self.input_ids.shape[0])

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
        """For each image, in order, the index of the sample it belongs to."""
        return [i for i, n in enumerate(self.image_counts.tolist()) for _ in range(n)]

    def select(self, keep: Sequence[int]) -> "Batch":
        """The rows at `keep`, in that order; images follow their rows; padding is kept. (A packed row goes whole,
        with the ids of its samples; `instruct_data.packed_collate.select_packed` takes samples out of rows.)"""
        keep = list(keep)
        owners = self.image_owners()
        images = [j for i in keep for j, owner in enumerate(owners) if owner == i]
        rows = torch.as_tensor(keep, dtype=torch.long)
        pixel_rows = images
        if self.image_tiles is not None:  # anyres: each image owns a run of tiles in pixel_values
            starts = [sum(self.image_tiles[:j]) for j in range(len(self.image_tiles))]
            pixel_rows = [starts[j] + t for j in images for t in range(self.image_tiles[j])]

        def pick_rows(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[rows]

        return dataclasses.replace(
            self,
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            labels=pick_rows(self.labels),
            image_counts=self.image_counts[rows],
            pixel_values=self.pixel_values[pixel_rows] if self.pixel_values is not None and pixel_rows else None,
            image_keys=[self.image_keys[j] for j in images] if self.image_keys else [],
            ids=self._row_ids(keep),
            position_ids=pick_rows(self.position_ids),
            sample_lengths=None if self.sample_lengths is None else [self.sample_lengths[i] for i in keep],
            sample_image_counts=(None if self.sample_image_counts is None
                                 else [self.sample_image_counts[i] for i in keep]),
            image_sizes=None if self.image_sizes is None else [self.image_sizes[j] for j in images],
            image_tiles=None if self.image_tiles is None else [self.image_tiles[j] for j in images],
        )

    def _row_ids(self, keep: list[int]) -> list[str]:
        if not self.ids:
            return []
        if self.sample_lengths is None or len(self.ids) == self.num_samples:
            return [self.ids[i] for i in keep]
        starts = [0]  # packed, one id per sample: row r holds ids[starts[r]:starts[r + 1]]
        for row in self.sample_lengths:
            starts.append(starts[-1] + len(row))
        return [self.ids[k] for i in keep for k in range(starts[i], starts[i + 1])]
