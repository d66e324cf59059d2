"""Tests for vlm.batch.Batch: defaults, select (images follow samples), counts, moves, the zero batch, pickling."""
from __future__ import annotations

import pickle

import pytest
import torch

from conversation.tokenize import IGNORE_INDEX
from vlm.batch import Batch


def packed_batch() -> Batch:
    """3 rows; images: row 0 has 1, row 1 none, row 2 two (5 x 5 pixels with their index as value)."""
    ids = torch.arange(12).reshape(3, 4)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2:] = 1  # 2 supervised after the shift
    labels[2, 0:2] = 1  # labels[2, 0] is never predicted: 1 after the shift
    pixels = torch.arange(3, dtype=torch.float32)[:, None, None, None].expand(3, 3, 5, 5).clone()
    return Batch(ids, torch.ones_like(ids), labels, image_counts=torch.tensor([1, 0, 2]), pixel_values=pixels,
                 image_keys=["a0", "c0", "c1"], ids=["a", "b", "c"], skipped=[("x", "image: broken")],
                 position_ids=torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3], [0, 0, 1, 2]]),
                 sample_lengths=[[2, 2], [4], [1, 3]], image_sizes=[(5, 5), (6, 5), (7, 5)])


def test_text_only_batch_defaults() -> None:
    ids = torch.ones(2, 3, dtype=torch.long)
    batch = Batch(ids, torch.ones_like(ids))
    assert batch.image_counts.tolist() == [0, 0] and batch.pixel_values is None and batch.labels is None
    assert batch.num_rows == 2 and batch.num_records == 2 and batch.supervised_tokens() == 0 and batch.image_owners() == []
    with pytest.raises(ValueError, match="needs image_counts"):
        Batch(ids, torch.ones_like(ids), pixel_values=torch.zeros(1, 3, 4, 4))


def test_supervised_tokens_count_shifted_labels() -> None:
    assert packed_batch().supervised_tokens() == 3


def test_select_keeps_rows_with_their_images_and_per_image_fields() -> None:
    batch = packed_batch()
    kept = batch.select([2, 0])
    assert kept.ids == ["c", "a"] and kept.num_rows == 2
    assert torch.equal(kept.input_ids, batch.input_ids[[2, 0]]) and torch.equal(kept.labels, batch.labels[[2, 0]])
    assert torch.equal(kept.position_ids, batch.position_ids[[2, 0]])
    assert kept.image_counts.tolist() == [2, 1] and kept.image_owners() == [0, 0, 1]
    assert kept.pixel_values[:, 0, 0, 0].tolist() == [1.0, 2.0, 0.0]
    assert kept.image_keys == ["c0", "c1", "a0"] and kept.image_sizes == [(6, 5), (7, 5), (5, 5)]
    assert kept.sample_lengths == [[1, 3], [2, 2]] and kept.skipped == batch.skipped
    text = batch.select([1])
    assert text.pixel_values is None and text.image_keys == [] and text.image_sizes == [] and text.ids == ["b"]
    none = batch.select([])
    assert none.num_rows == 0 and none.pixel_values is None


def test_empty_is_one_unsupervised_pad_token() -> None:
    zero = Batch.empty(pad_token_id=7)
    assert zero.input_ids.tolist() == [[7]] and zero.attention_mask.tolist() == [[1]]
    assert zero.labels.tolist() == [[IGNORE_INDEX]] and zero.image_counts.tolist() == [0]
    assert zero.supervised_tokens() == 0


def test_to_moves_every_tensor_and_pickles() -> None:
    batch = packed_batch()
    moved = batch.to(torch.device("meta"))
    tensors = ["input_ids", "attention_mask", "labels", "image_counts", "pixel_values", "position_ids"]
    assert all(getattr(moved, name).device.type == "meta" for name in tensors)
    assert batch.input_ids.device.type == "cpu" and moved.ids is batch.ids
    again = pickle.loads(pickle.dumps(batch))  # DataLoader workers send batches back pickled
    assert torch.equal(again.pixel_values, batch.pixel_values) and again.sample_lengths == batch.sample_lengths
