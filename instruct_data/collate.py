"""Batch collation: dataset items -> a right-padded `Batch` (attention masks, stacked images, skipped items reported)."""
from __future__ import annotations

from typing import Sequence

import torch

from conversation.tokenize import IGNORE_INDEX
from instruct_data.item import Item, Skipped
from vlm.batch import Batch

__all__ = ["Collator", "Skipped", "collate"]


def collate(items: Sequence[Item | Skipped | None], pad_token_id: int) -> Batch:
    """Stack dataset items; `Skipped`/None items are dropped and listed in `skipped` as (id, reason)."""
    skipped: list[tuple[str, str]] = []
    good: list[Item] = []
    for item in items:
        if item is None:
            skipped.append(("?", "dataset returned None"))
        elif isinstance(item, Skipped):
            skipped.append((item.id, item.reason))
        else:
            good.append(item)
    batch_size = len(good)
    length = max((len(it.input_ids) for it in good), default=0)
    input_ids = torch.full((batch_size, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    pixels: list[torch.Tensor] = []
    image_counts = torch.zeros(batch_size, dtype=torch.long)
    image_keys: list[str] = []
    anyres = any(it.image_sizes is not None for it in good)
    image_sizes: list[tuple[int, int]] = []
    image_tiles: list[int] = []
    keys_only = 0
    for b, it in enumerate(good):
        n = len(it.input_ids)
        input_ids[b, :n] = torch.as_tensor(it.input_ids, dtype=torch.long)
        labels[b, :n] = torch.as_tensor(it.labels, dtype=torch.long)
        attention_mask[b, :n] = 1
        pv = it.pixel_values
        count = it.num_images  # keys only (feature-cache mode): counted by keys
        if anyres:  # pixels are tiles: counted by the images' sizes
            if it.image_sizes is None or it.image_tiles is None:
                raise ValueError(f"batch mixes anyres items (with image_sizes) and others (id {it.id!r})")
            if sum(it.image_tiles) != (0 if pv is None else int(pv.shape[0])):
                raise ValueError(f"item {it.id!r}: {sum(it.image_tiles)} tiles listed but pixel_values holds "
                                 f"{0 if pv is None else int(pv.shape[0])}")
            image_sizes.extend(tuple(size) for size in it.image_sizes)
            image_tiles.extend(int(n) for n in it.image_tiles)
        if pv is not None and count:
            pixels.append(pv)
        elif count:
            keys_only += 1
        image_counts[b] = count
        image_keys.extend(it.image_keys)
    if keys_only and pixels:
        raise ValueError(f"batch mixes items with and without loaded pixels (ids {[it.id for it in good]})")
    shapes = {tuple(p.shape[1:]) for p in pixels}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes in one batch: {sorted(shapes)} (ids {[it.id for it in good]})")
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        image_counts=image_counts,
        pixel_values=torch.cat(pixels) if pixels else None,
        image_keys=image_keys,
        ids=[it.id for it in good],
        skipped=skipped,
        # anyres: (height, width) and tile count of every image in order; pixel_values holds all tiles
        image_sizes=image_sizes if anyres else None,
        image_tiles=image_tiles if anyres else None,
    )


class Collator:
    """A picklable `collate` bound to a pad id, for `DataLoader(collate_fn=...)` with worker processes."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[Item | Skipped | None]) -> Batch:
        return collate(items, self.pad_token_id)
