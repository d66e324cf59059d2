"""Tests for instruct_data.collate: right padding, masks, image stacking, dropped items reported."""
from __future__ import annotations

import pickle

import pytest
import torch

from instruct_data.collate import Collator, Skipped, collate
from instruct_data.item import Item


def item(rid, n, n_img=0, side=4):
    return Item(rid, torch.arange(1, n + 1), torch.tensor([-100] * (n - 1) + [n]),
                pixel_values=torch.full((n_img, 3, side, side), float(n)) if n_img else None,
                image_keys=[f"{rid}/{k}.png" for k in range(n_img)])


def test_right_padding_masks_and_labels():
    batch = collate([item("a", 3, 1), item("b", 5, 0), item("c", 2, 2)], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5], [1, 2, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 3, -100, -100], [-100] * 4 + [5], [-100, 2, -100, -100, -100]]
    assert batch.pixel_values.shape == (3, 3, 4, 4)
    assert batch.pixel_values[:, 0, 0, 0].tolist() == [3.0, 2.0, 2.0]  # order of appearance
    assert batch.image_counts.tolist() == [1, 0, 2]
    assert batch.image_keys == ["a/0.png", "c/0.png", "c/1.png"]
    assert batch.ids == ["a", "b", "c"] and batch.skipped == []


def test_text_only_batch_has_no_pixels():
    batch = collate([item("a", 2), item("b", 3)], pad_token_id=7)
    assert batch.pixel_values is None
    assert batch.input_ids[0, 2].item() == 7


def test_image_counts_from_keys_when_pixels_are_not_loaded():
    it = item("a", 2, 2)
    it.pixel_values = None
    batch = collate([it, item("b", 2)], pad_token_id=0)
    assert batch.image_counts.tolist() == [2, 0] and batch.pixel_values is None
    assert batch.image_keys == ["a/0.png", "a/1.png"]


def test_skipped_and_none_items_are_dropped_and_reported():
    batch = collate([Skipped("bad1", "image: missing file"), item("a", 2), None], pad_token_id=0)
    assert batch.ids == ["a"] and batch.input_ids.shape == (1, 2)
    assert batch.skipped == [("bad1", "image: missing file"), ("?", "dataset returned None")]
    empty = collate([Skipped("x", "r")], pad_token_id=0)
    assert empty.input_ids.shape == (0, 0) and empty.skipped == [("x", "r")]


def test_mixed_image_sizes_are_an_error_naming_ids():
    with pytest.raises(ValueError, match="different sizes.*'a', 'b'"):
        collate([item("a", 2, 1, side=4), item("b", 2, 1, side=8)], pad_token_id=0)


def test_collator_pickles_for_workers():
    c = pickle.loads(pickle.dumps(Collator(3)))
    assert c([item("a", 1), item("b", 2)]).input_ids.tolist() == [[1, 3], [1, 2]]


def test_select_samples_keeps_rows_with_their_images() -> None:
    batch = collate([item("a", 3, 1), item("b", 5, 0), item("c", 2, 2)], pad_token_id=0)
    kept = batch.select([0, 2])
    assert kept.ids == ["a", "c"]
    assert kept.image_counts.tolist() == [1, 2] and kept.image_keys == ["a/0.png", "c/0.png", "c/1.png"]
    assert torch.equal(kept.pixel_values, batch.pixel_values)  # b had no image
    assert torch.equal(kept.input_ids, batch.input_ids[[0, 2]])
    only_b = batch.select([1])
    assert only_b.pixel_values is None and only_b.image_keys == [] and only_b.ids == ["b"]
    c_only = batch.select([2])
    assert torch.equal(c_only.pixel_values, batch.pixel_values[1:])
