"""Tests for instruct_data.packing and packed_collate: first-fit decreasing, packed micro-batches inside the grouped
samplers' steps, resumable state, packed collation (positions, boundary labels, images with their samples)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conversation.tokenize import IGNORE_INDEX
from instruct_data.collate import Skipped, collate
from instruct_data.dataset import InstructDataset
from instruct_data.item import Item
from instruct_data.packed_collate import PackedRows, collate_packed
from instruct_data.packing import (PackedBatchSampler, balanced_rows, first_fit_decreasing, micro_batches, pack_stats,
                                   unpacked_stats)
from instruct_data.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler
from instruct_data.sources import load_records


def lengths_of(n: int, seed: int = 0, text_share: float = 0.3) -> list[int]:
    rng = random.Random(seed)
    return [(-1 if rng.random() < text_share else 1) * rng.randint(5, 120) for _ in range(n)]


def test_first_fit_decreasing_fills_rows_without_splitting() -> None:
    lengths = [60, 50, 40, 30, 20, 10, 100]
    rows = first_fit_decreasing(range(7), lengths, 100)
    assert rows == [(6,), (0, 2), (1, 3, 4), (5,)]  # longest first, each into the first row with room
    assert sorted(i for row in rows for i in row) == list(range(7))
    with pytest.raises(ValueError, match="sample 1 has 101 tokens, more than data.pack_length=100"):
        first_fit_decreasing([0, 1], [5, 101], 100)


def test_first_fit_decreasing_respects_capacity_on_random_lengths() -> None:
    lengths = lengths_of(300, seed=3)
    rows = first_fit_decreasing(list(range(300)), lengths, 256)
    assert all(sum(abs(lengths[i]) for i in row) <= 256 for row in rows)
    assert sorted(i for row in rows for i in row) == list(range(300))
    total = sum(abs(x) for x in lengths)
    assert len(rows) <= total // 256 + 2  # FFD is near the bound on such lengths


def test_balanced_rows_use_as_many_rows_as_ffd_filled_evenly() -> None:
    lengths = [60, 50, 40, 30, 20, 10, 100]
    rows = balanced_rows(range(7), lengths, 100)
    assert len(rows) == 4 and sorted(i for row in rows for i in row) == list(range(7))
    assert sorted(sum(lengths[i] for i in row) for row in rows) == [70, 70, 70, 100]
    tight = [4, 3, 3, 2, 2, 2, 2]  # FFD: 4+2, 3+3, 2+2+2; emptiest-row-first overflows a row of 6 -> FFD's rows
    assert balanced_rows(range(7), tight, 6) == first_fit_decreasing(range(7), tight, 6) == [(0, 3), (1, 2), (4, 5, 6)]


def test_micro_batches_put_empty_slots_first_and_refuse_overflow() -> None:
    lengths = [10, 20, 30, 40]
    rows = [(0,), (1,), (2, 3)]
    assert micro_batches(rows, lengths, 2, 3) == [[], [(2, 3), (1,)], [(0,)]]
    with pytest.raises(ValueError, match="more than the 1 of one step"):
        micro_batches(rows, lengths, 2, 1)


def packer(lengths, *, seed=0, world_size=1, rank=0, step=8, micro=2, pack_length=256,
           sampler_cls=LengthGroupedSampler):
    sampler = sampler_cls(lengths, step, world_size=world_size, rank=rank, seed=seed, megabatch_steps=4)
    return PackedBatchSampler(sampler, lengths, step_size=step, pack_length=pack_length, rows_per_micro_batch=micro,
                              micro_batches_per_step=step // micro)


@pytest.mark.parametrize("sampler_cls", [LengthGroupedSampler, ModalityLengthGroupedSampler])
def test_packing_happens_inside_the_samplers_steps(sampler_cls) -> None:
    lengths = lengths_of(100, seed=1)
    packed = packer(lengths, sampler_cls=sampler_cls)
    sampler = sampler_cls(lengths, 8, seed=0, megabatch_steps=4)
    plain = sampler.rank_indices()[:96]  # 12 whole steps
    batches = packed.epoch_batches(0)
    assert len(batches) == 12 * 4  # 4 micro-batch slots per step, every step
    for step in range(12):
        window = batches[step * 4:(step + 1) * 4]
        samples = [i for mb in window for row in mb for i in row]
        assert sorted(samples) == sorted(plain[step * 8:(step + 1) * 8])  # the same samples as unpacked
        assert window[-1], "the step's last micro-batch is a real one"
        assert all(len(mb) <= 2 for mb in window)
        assert all(sum(abs(lengths[i]) for i in row) <= 256 for mb in window for row in mb)


def test_packing_is_deterministic_per_seed_and_epoch() -> None:
    lengths = lengths_of(80, seed=2)
    a, b = packer(lengths, seed=5), packer(lengths, seed=5)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(1) == b.epoch_batches(1) != b.epoch_batches(0)
    assert packer(lengths, seed=6).epoch_batches(0) != a.epoch_batches(0)


def test_ranks_get_disjoint_shares_and_equal_micro_batch_counts() -> None:
    lengths = lengths_of(96, seed=4)
    ranks = [packer(lengths, world_size=2, rank=r, step=4) for r in range(2)]
    batches = [p.epoch_batches(0) for p in ranks]
    assert len(batches[0]) == len(batches[1])
    seen = [{i for mb in bs for row in mb for i in row} for bs in batches]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 96


def test_state_round_trips_and_refuses_another_packing() -> None:
    lengths = lengths_of(64, seed=7)
    first = packer(lengths)
    first.epoch_batches(1)
    state = first.state_dict(consumed=5)
    again = packer(lengths)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert (again.epoch, again.position) == (1, 5)
    with pytest.raises(ValueError, match="pack_length"):
        packer(lengths, pack_length=512).load_state_dict(state)
    changed = lengths[::-1]  # other data: other packs
    with pytest.raises(ValueError, match="digest"):
        packer(changed).load_state_dict(state)


def test_packing_removes_most_padding() -> None:
    lengths = lengths_of(400, seed=9)
    packed = packer(lengths, step=32, micro=4, pack_length=512)
    plain_sampler = LengthGroupedSampler(lengths, 32, seed=0, megabatch_steps=4)
    order = plain_sampler.rank_indices()[:384]
    plain = unpacked_stats([order[k:k + 4] for k in range(0, 384, 4)], lengths)
    stats = pack_stats(packed.epoch_batches(0), lengths)
    assert stats.samples == plain.samples == 384 and stats.tokens == plain.tokens
    assert stats.samples_per_row > 4 and stats.padding_ratio < plain.padding_ratio


# ------------------------------------------------------------------ collation
def item(rid, n, n_img=0, side=4, first_label=None):
    labels = [-100] * (n - 2) + [n, n + 1]
    if first_label is not None:
        labels[0] = first_label
    return Item(rid, torch.arange(1, n + 1) + 10 * len(rid), torch.tensor(labels),
                pixel_values=torch.full((n_img, 3, side, side), float(n)) if n_img else None,
                image_keys=[f"{rid}/{k}.png" for k in range(n_img)])


def test_packed_collation() -> None:
    rows = [[item("a", 3, 1, first_label=99), item("bb", 4, 0, first_label=98)], [item("c", 2, 2)],
            [Skipped("x", "image: gone")]]
    batch = collate_packed(rows, pad_token_id=0)
    assert batch.input_ids.shape == (2, 7)  # the all-skipped row is dropped
    assert batch.sample_lengths == [[3, 4], [2]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4]]
    assert batch.attention_mask.tolist() == [[1] * 7, [1, 1, 0, 0, 0, 0, 0]]
    # A sample's first token is never a target (of the sample before it); the rest of the labels are kept.
    assert batch.labels[0].tolist() == [IGNORE_INDEX, 3, 4, IGNORE_INDEX, -100, 4, 5]
    assert batch.labels[1].tolist() == [IGNORE_INDEX, 3] + [IGNORE_INDEX] * 5
    assert batch.input_ids[1, 2:].tolist() == [0] * 5
    assert batch.image_counts.tolist() == [1, 2] and batch.sample_image_counts == [[1, 0], [2]]
    assert batch.pixel_values[:, 0, 0, 0].tolist() == [3.0, 2.0, 2.0]
    assert batch.image_keys == ["a/0.png", "c/0.png", "c/1.png"]
    assert batch.ids == ["a", "bb", "c"] and batch.skipped == [("x", "image: gone")]
    assert batch.record_image_owners() == [0, 2, 2]


def test_without_records_keeps_rows_and_images_matched() -> None:
    batch = collate_packed([[item("a", 3, 1), item("bb", 4, 0), item("c", 2, 2)], [item("d", 5, 1)]], pad_token_id=0)
    only_c = batch.without_records([0, 1, 3], pad_token_id=0)
    assert only_c.ids == ["c"] and only_c.image_keys == ["c/0.png", "c/1.png"]
    kept = batch.without_records([0, 2], pad_token_id=0)
    assert kept.ids == ["bb", "d"] and kept.sample_lengths == [[4], [5]]
    assert kept.image_keys == ["d/0.png"] and kept.image_counts.tolist() == [0, 1]
    assert kept.pixel_values[:, 0, 0, 0].tolist() == [5.0]


@pytest.mark.parametrize("drop", [[], [0], [1], [2], [0, 2], [1, 3], [0, 1, 2], [3], [0, 1, 2, 3]])
def test_without_records_equals_collating_the_remaining_items(drop) -> None:
    """Cutting records out of packed rows gives exactly the batch the collator makes of the records left."""
    rows = [[item("a", 3, 1, first_label=99), item("bb", 4, 0), item("c", 2, 2)], [item("d", 5, 1)]]
    batch = collate_packed(rows, pad_token_id=0)
    numbered = iter(range(4))
    kept_rows = [[it for it in row if next(numbered) not in drop] for row in rows]
    expected = collate_packed([row for row in kept_rows if row], pad_token_id=0)
    cut = batch.without_records(drop, pad_token_id=0)
    assert cut.ids == expected.ids and cut.sample_lengths == expected.sample_lengths
    assert cut.sample_image_counts == expected.sample_image_counts and cut.image_keys == expected.image_keys
    for name in ("input_ids", "attention_mask", "labels", "position_ids", "image_counts", "pixel_values"):
        got, want = getattr(cut, name), getattr(expected, name)
        assert (got is None and want is None) or torch.equal(got, want), name


def test_mixed_image_sizes_are_still_an_error() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        collate_packed([[item("a", 2, 1, side=4), item("b", 2, 1, side=8)]], pad_token_id=0)


# ------------------------------------------------------------------ exact lengths from the dataset
def test_tokenize_all_gives_exact_lengths_without_loading_images(tmp_path, bpe_tokenizer, monkeypatch) -> None:
    import vlm.inputs
    from vision_encoders.preprocess import ImageProcessor

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    recs = [{"id": f"r{i}", "image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\n" + "what color " * (i + 1)}, {"from": "gpt", "value": "red"}]}
        for i in range(5)]
    recs.append({"id": "text", "conversations": [{"from": "human", "value": "say yes"},
                                                  {"from": "gpt", "value": "yes"}]})
    recs.append({"id": "bad", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]})
    (tmp_path / "d.json").write_text(json.dumps(recs))
    loads = []

    def load(path, **kwargs):
        loads.append(path)
        return Image.open(path)

    monkeypatch.setattr(vlm.inputs, "load_image", load)
    ds = InstructDataset(load_records(tmp_path / "d.json", image_roots=[tmp_path]), "vicuna_v1", bpe_tokenizer,
                         image_token_id=bpe_tokenizer.convert_tokens_to_ids("<image>"), num_image_tokens=4,
                         image_processor=ImageProcessor(size=4, mean=(0.5,) * 3, std=(0.5,) * 3), max_length=120)
    assert ds.tokenize_all() == 7 and loads == []
    lengths = ds.lengths()
    for i in range(6):
        assert lengths[i] == len(ds[i].input_ids)
    assert lengths[6] == 0 and isinstance(ds[6], Skipped)
    assert ds.modality_lengths()[5] < 0 < ds.modality_lengths()[0]
    assert ds.tokenize_all() == 0  # once only
    # Packed rows of real items collate with their images in order.
    rows = [tuple(r) for r in first_fit_decreasing(list(range(6)), lengths, 256)]
    batch = collate_packed([PackedRows(ds)[row] for row in rows], pad_token_id=0)
    assert sum(map(len, batch.sample_lengths)) == 6 and batch.pixel_values.shape[0] == 5
    assert int(batch.attention_mask.sum()) == sum(lengths[:6])
    assert np.all(batch.attention_mask.sum(1).numpy() <= 256)
    plain = collate([ds[i] for row in rows for i in row], pad_token_id=0)
    assert torch.equal(plain.pixel_values, batch.pixel_values) and plain.ids == batch.ids


def test_batch_select_keeps_packed_rows_with_their_samples_ids() -> None:
    batch = collate_packed([[item("a", 3, 1), item("bb", 4, 0)], [item("c", 2, 2)], [item("d", 5, 0)]], pad_token_id=0)
    kept = batch.select([2, 0])
    assert kept.ids == ["d", "a", "bb"] and kept.sample_lengths == [[5], [3, 4]]
    assert kept.sample_image_counts == [[0], [1, 0]] and kept.image_keys == ["a/0.png"]


def test_anyres_tiles_stay_with_their_samples() -> None:
    """anyres: pixel_values holds tiles; a packed row counts images (not tiles), and cutting a sample out of a row
    keeps every other image's tiles, sizes and keys together."""
    def tiled(rid, n, tiles):
        it = item(rid, n)
        it.pixel_values = torch.cat([torch.full((t, 3, 4, 4), float(10 * k + len(rid)))
                                     for k, t in enumerate(tiles)])
        it.image_keys = [f"{rid}/{k}.png" for k in range(len(tiles))]
        it.image_sizes, it.image_tiles = [(8 + k, 8) for k in range(len(tiles))], list(tiles)
        return it

    batch = collate_packed([[tiled("a", 5, [2, 3]), tiled("bb", 4, [1])], [tiled("ccc", 6, [2])]], pad_token_id=0)
    assert batch.image_counts.tolist() == [3, 1] and batch.sample_image_counts == [[2, 1], [1]]
    assert batch.image_tiles == [2, 3, 1, 2] and batch.pixel_values.shape[0] == 8
    kept = batch.without_records([0], pad_token_id=0)
    assert kept.ids == ["bb", "ccc"] and kept.image_tiles == [1, 2] and kept.image_sizes == [(8, 8), (8, 8)]
    assert kept.pixel_values[:, 0, 0, 0].tolist() == [2.0, 3.0, 3.0] and kept.image_keys == ["bb/0.png", "ccc/0.png"]


def test_pack_preview_counts_rows_samples_and_padding_by_hand() -> None:
    from instruct_data.packing import pack_preview

    # Step 1 (4 samples): first-fit decreasing needs 2 rows of 10; filled evenly: [6, 3] and [5, 4], 9 tokens each,
    # one micro-batch, no padding. Step 2: [7] alone.
    stats = pack_preview([6, 5, 4, 3, 7], capacity=10, step_samples=4, rows_per_micro_batch=2)
    assert (stats.samples, stats.rows, stats.tokens, stats.padded_tokens) == (5, 3, 25, 25)
    # One step of [6, 3, 5] in rows of 9: [6] and [5, 3] share a micro-batch, padded to 8: 16 slots for 14 tokens.
    stats = pack_preview([6, 3, 5], capacity=9, step_samples=3, rows_per_micro_batch=2)
    assert (stats.samples, stats.rows, stats.tokens, stats.padded_tokens) == (3, 2, 14, 16)
    assert stats.samples_per_row == 1.5 and stats.padding_ratio == 1 - 14 / 16
