"""Batch collation: right padding, attention masks, stacked images, skipped items reported."""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch

from conversation.tokenize import IGNORE_INDEX


class Skipped(NamedTuple):
    """What a dataset returns in place of a bad record (picklable, so it crosses DataLoader workers)."""

    id: str
    reason: str


def collate(items: Sequence[dict[str, Any] | Skipped | None], pad_token_id: int) -> dict[str, Any]:
    """Stack dataset items; `Skipped`/None items are dropped and listed in `skipped` as (id, reason)."""
    skipped: list[tuple[str, str]] = []
    good: list[dict[str, Any]] = []
    for item in items:
        if item is None:
            skipped.append(("?", "dataset returned None"))
        elif isinstance(item, Skipped):
            skipped.append((item.id, item.reason))
        else:
            good.append(item)
    batch_size = len(good)
    length = max((len(it["input_ids"]) for it in good), default=0)
    input_ids = torch.full((batch_size, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    pixels: list[torch.Tensor] = []
    image_counts = torch.zeros(batch_size, dtype=torch.long)
    image_keys: list[str] = []
    anyres = any("image_sizes" in it for it in good)
    image_sizes: list[tuple[int, int]] = []
    image_tiles: list[int] = []
    keys_only = 0
    for b, it in enumerate(good):
        n = len(it["input_ids"])
        input_ids[b, :n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.as_tensor(it["labels"], dtype=torch.long)
        attention_mask[b, :n] = 1
        pv = it.get("pixel_values")
        count = len(it.get("image_keys", [])) if pv is None else int(pv.shape[0])  # keys only: feature-cache mode
        if anyres:  # pixels are tiles: count images by their sizes
            if "image_sizes" not in it:
                raise ValueError(f"batch mixes anyres items (with image_sizes) and others (id {it['id']!r})")
            count = len(it["image_sizes"])
            if sum(it["image_tiles"]) != (0 if pv is None else int(pv.shape[0])):
                raise ValueError(f"item {it['id']!r}: {sum(it['image_tiles'])} tiles listed but pixel_values holds "
                                 f"{0 if pv is None else int(pv.shape[0])}")
            image_sizes.extend(tuple(size) for size in it["image_sizes"])
            image_tiles.extend(int(n) for n in it["image_tiles"])
        if pv is not None and count:
            pixels.append(pv)
        elif count:
            keys_only += 1
        image_counts[b] = count
        image_keys.extend(it.get("image_keys", []))
    if keys_only and pixels:
        raise ValueError(f"batch mixes items with and without loaded pixels (ids {[it['id'] for it in good]})")
    shapes = {tuple(p.shape[1:]) for p in pixels}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes in one batch: {sorted(shapes)} (ids {[it['id'] for it in good]})")
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": torch.cat(pixels) if pixels else None,
        "image_counts": image_counts,
        "image_keys": image_keys,
        "ids": [it["id"] for it in good],
        "skipped": skipped,
        # anyres: (height, width) and tile count of every image in order; pixel_values holds all tiles
        "image_sizes": image_sizes if anyres else None,
        "image_tiles": image_tiles if anyres else None,
    }


class Collator:
    """A picklable `collate` bound to a pad id, for `DataLoader(collate_fn=...)` with worker processes."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any] | Skipped | None]) -> dict[str, Any]:
        return collate(items, self.pad_token_id)


def image_owners(batch: dict[str, Any]) -> list[int]:
    """For each image of a collated `batch`, in order, the index of the sample it belongs to."""
    return [i for i, n in enumerate(batch["image_counts"].tolist()) for _ in range(n)]


def select_samples(batch: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """The collated `batch` restricted to the samples at `keep` (images follow their samples; padding is kept)."""
    owners = image_owners(batch)
    images = [j for i in keep for j, owner in enumerate(owners) if owner == i]
    rows = torch.as_tensor(list(keep), dtype=torch.long)
    pixels = batch.get("pixel_values")
    keys = batch.get("image_keys") or []
    sizes, tiles = batch.get("image_sizes"), batch.get("image_tiles")
    anyres: dict[str, Any] = {}
    pixel_rows = images
    if sizes is not None and tiles is not None:  # anyres: each image owns a run of tiles in pixel_values
        starts = [sum(tiles[:j]) for j in range(len(tiles))]
        pixel_rows = [starts[j] + t for j in images for t in range(tiles[j])]
        anyres = {"image_sizes": [sizes[j] for j in images], "image_tiles": [tiles[j] for j in images]}
    return {
        **batch,
        **anyres,
        "input_ids": batch["input_ids"][rows],
        "attention_mask": batch["attention_mask"][rows],
        "labels": batch["labels"][rows],
        "pixel_values": pixels[pixel_rows] if pixels is not None and pixel_rows else None,
        "image_counts": batch["image_counts"][rows],
        "image_keys": [keys[j] for j in images] if keys else [],
        "ids": [batch["ids"][i] for i in keep],
    }
