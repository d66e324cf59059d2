"""Collation of packed rows: samples concatenated per row, positions restarting per sample, no label across a
sample boundary, images stacked in the order of their samples."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from conversation.tokenize import IGNORE_INDEX
from instruct_data.collate import collate
from instruct_data.item import Item, Skipped
from vlm.batch import Batch


def collate_packed(rows: Sequence[Sequence[Item | Skipped | None]], pad_token_id: int) -> Batch:
    """One batch row per packed row (rows whose items were all skipped are dropped), right padded.

    As `collate`, with `image_counts` per row, `ids` per sample in row order, and also `position_ids`
    ([B, L], 0.. per sample; the padding tail counts from 0 too), `sample_lengths` (per row, its samples' lengths)
    and `sample_image_counts` (per row, its samples' image counts). The first label of every sample is
    IGNORE_INDEX: as in an unpacked batch, a sample's first token is never a target (here: of the sample before).
    """
    good_rows: list[list[Item]] = []
    flat: list[Item | Skipped | None] = []
    for row in rows:
        flat.extend(row)
        good = [it for it in row if isinstance(it, Item)]
        if good:
            good_rows.append(good)
    # The ordinary collator checks images (pixels vs keys only, one size) and lists the skips, over all samples.
    base = collate(flat, pad_token_id)
    lengths = [[len(it.input_ids) for it in row] for row in good_rows]
    width = max((sum(row) for row in lengths), default=0)
    batch_size = len(good_rows)
    input_ids = torch.full((batch_size, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    position_ids = torch.zeros((batch_size, width), dtype=torch.long)
    for b, row in enumerate(good_rows):
        start = 0
        for it in row:
            n = len(it.input_ids)
            input_ids[b, start:start + n] = torch.as_tensor(it.input_ids, dtype=torch.long)
            labels[b, start:start + n] = torch.as_tensor(it.labels, dtype=torch.long)
            labels[b, start] = IGNORE_INDEX
            position_ids[b, start:start + n] = torch.arange(n)
            start += n
        attention_mask[b, :start] = 1
        position_ids[b, start:] = torch.arange(width - start)
    return dataclasses.replace(
        base, input_ids=input_ids, attention_mask=attention_mask, labels=labels, position_ids=position_ids,
        sample_lengths=lengths, sample_image_counts=[[it.num_images for it in row] for row in good_rows],
        image_counts=torch.tensor([sum(it.num_images for it in row) for row in good_rows], dtype=torch.long))


class PackedCollator:
    """A picklable `collate_packed` bound to a pad id (the DataLoader's items are rows: lists of dataset items)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Sequence[Item | Skipped | None]]) -> Batch:
        return collate_packed(rows, self.pad_token_id)


class PackedRows:
    """A map-style view of a dataset whose keys are packed rows (tuples of indices) and whose items are lists."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: Sequence[int]) -> list[Item | Skipped | None]:
        return [self.dataset[int(i)] for i in row]
