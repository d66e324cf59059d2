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
    keys_only = 0
    for b, it in enumerate(good):
        n = len(it["input_ids"])
        input_ids[b, :n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.as_tensor(it["labels"], dtype=torch.long)
        attention_mask[b, :n] = 1
        pv = it.get("pixel_values")
        count = len(it.get("image_keys", [])) if pv is None else int(pv.shape[0])  # keys only: feature-cache mode
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
    }


class Collator:
    """A picklable `collate` bound to a pad id, for `DataLoader(collate_fn=...)` with worker processes."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any] | Skipped | None]) -> dict[str, Any]:
        return collate(items, self.pad_token_id)


def image_owners(batch: dict[str, Any]) -> list[int]:
    """For each image of a collated `batch`, in order, the index of the sample (in `ids`) it belongs to."""
    if batch.get("sample_lengths") is not None:  # packed rows: samples are not rows
        from instruct_data.packed_collate import packed_image_owners

        return packed_image_owners(batch)
    return [i for i, n in enumerate(batch["image_counts"].tolist()) for _ in range(n)]


def select_samples(batch: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """The collated `batch` restricted to the samples at `keep` (images follow their samples; padding is kept)."""
    owners = image_owners(batch)
    images = [j for i in keep for j, owner in enumerate(owners) if owner == i]
    rows = torch.as_tensor(list(keep), dtype=torch.long)
    pixels = batch.get("pixel_values")
    keys = batch.get("image_keys") or []
    return {
        **batch,
        "input_ids": batch["input_ids"][rows],
        "attention_mask": batch["attention_mask"][rows],
        "labels": batch["labels"][rows],
        "pixel_values": pixels[images] if pixels is not None and images else None,
        "image_counts": batch["image_counts"][rows],
        "image_keys": [keys[j] for j in images] if keys else [],
        "ids": [batch["ids"][i] for i in keep],
    }
