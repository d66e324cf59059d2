"""`Item`: one tokenized record as the dataset hands it to the collators, and `Skipped` in place of a bad one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass
class Item:
    """A training record, tokenized, with its images (a plain dataclass: DataLoader workers pickle it)."""

    id: str
    input_ids: torch.Tensor  # [L] long
    labels: torch.Tensor  # [L] long, IGNORE_INDEX where not supervised (unshifted)
    # [n, 3, S, S]: the record's images in order (anyres: every image's tiles); None without images, or when the
    # dataset only resolved their paths (feature cache: the features come from `image_keys`)
    pixel_values: torch.Tensor | None = None
    image_keys: list[str] = field(default_factory=list)  # [images] resolved image paths
    image_sizes: list[tuple[int, int]] | None = None  # [images] anyres: (height, width) of each image
    image_tiles: list[int] | None = None  # [images] anyres: tiles of each image in pixel_values

    @property
    def num_images(self) -> int:
        if self.image_sizes is not None:  # anyres: pixel_values holds tiles
            return len(self.image_sizes)
        return len(self.image_keys) if self.pixel_values is None else int(self.pixel_values.shape[0])


class Skipped(NamedTuple):
    """What a dataset returns in place of a bad record (picklable, so it crosses DataLoader workers)."""

    id: str
    reason: str
