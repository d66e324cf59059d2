"""anyres in the data layer: exact per-image token counts from header sizes, tiles and sizes carried to the batch."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from instruct_data.collate import collate
from instruct_data.dataset import InstructDataset
from instruct_data.sources import load_records
from vision_encoders.preprocess import ImageProcessor

PINS = "(1x1),...,(2x3)"


def processor() -> ImageProcessor:
    return ImageProcessor(size=8, mean=(0.5,) * 3, std=(0.5,) * 3, aspect_ratio="anyres", grid_pinpoints=PINS)


@pytest.fixture()
def data(tmp_path):
    import json

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 10), (255, 0, 0)).save(tmp_path / "imgs" / "wide.png")
    Image.new("RGB", (10, 30), (0, 255, 0)).save(tmp_path / "imgs" / "tall.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "imgs" / "square.png")
    recs = [
        {"id": "wide", "image": "wide.png", "conversations": [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Say yes"}, {"from": "gpt", "value": "yes"}]},
        {"id": "two", "image": ["tall.png", "square.png"], "conversations": [{"from": "human", "value": "<image> vs <image>"}, {"from": "gpt", "value": "green, blue"}]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return load_records(path, image_roots=[tmp_path / "imgs"])


def make(data, tok, **kw):
    proc = processor()
    geometry = proc.anyres_geometry(grid_side=2)
    ds = InstructDataset(data, "vicuna_v1", tok, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         num_image_tokens=geometry.num_tokens, image_processor=proc, **kw)
    return ds, geometry


def test_items_carry_exact_counts_tiles_and_sizes(data, bpe_tokenizer):
    ds, geo = make(data, bpe_tokenizer)
    image_id = bpe_tokenizer.convert_tokens_to_ids("<image>")
    wide, text, two = ds[0], ds[1], ds[2]
    assert wide.image_sizes == [(10, 40)] and wide.image_tiles == [geo.num_tiles((10, 40))]
    assert int((wide.input_ids == image_id).sum()) == geo.num_tokens((10, 40))
    assert wide.pixel_values.shape == (geo.num_tiles((10, 40)), 3, 8, 8)
    assert text.image_sizes == [] and text.pixel_values is None
    assert two.image_sizes == [(30, 10), (16, 16)]
    assert int((two.input_ids == image_id).sum()) == geo.num_tokens((30, 10)) + geo.num_tokens((16, 16))
    assert geo.num_tokens((30, 10)) != geo.num_tokens((16, 16))
    assert ds.lengths()[:3] == [len(wide.input_ids), len(text.input_ids), len(two.input_ids)]


def test_collate_and_select_keep_tiles_with_their_images(data, bpe_tokenizer):
    ds, geo = make(data, bpe_tokenizer)
    batch = collate([ds[0], ds[1], ds[2]], pad_token_id=0)
    tiles = [geo.num_tiles(s) for s in [(10, 40), (30, 10), (16, 16)]]
    assert batch.image_counts.tolist() == [1, 0, 2]
    assert batch.image_sizes == [(10, 40), (30, 10), (16, 16)] and batch.image_tiles == tiles
    assert batch.pixel_values.shape[0] == sum(tiles)
    kept = batch.select([2])
    assert kept.image_sizes == [(30, 10), (16, 16)] and kept.image_tiles == tiles[1:]
    assert torch.equal(kept.pixel_values, batch.pixel_values[tiles[0]:])
    assert kept.image_keys == batch.image_keys[1:]
    first = batch.select([0])
    assert first.image_tiles == tiles[:1] and torch.equal(first.pixel_values, batch.pixel_values[:tiles[0]])


def test_length_estimates_before_tokenization_use_calibrated_image_tokens(data, bpe_tokenizer):
    ds, geo = make(data, bpe_tokenizer)
    ds.calibrate()
    assert ds._per_image == pytest.approx(sum(geo.num_tokens(s) for s in [(10, 40), (30, 10), (16, 16)]) / 3)


def test_feature_cache_mode_is_refused(data, bpe_tokenizer):
    with pytest.raises(ValueError, match="feature cache"):
        make(data, bpe_tokenizer, load_pixels=False)


def test_audit_counts_each_image_from_its_size(data, bpe_tokenizer):
    from instruct_data.audit import audit_records

    ds, geo = make(data, bpe_tokenizer)
    report = audit_records(data, "vicuna_v1", bpe_tokenizer, image_token_id=bpe_tokenizer.convert_tokens_to_ids("<image>"),
                           num_image_tokens=geo.num_tokens, max_length=None)
    expected = [geo.num_tokens(s) for s in [(10, 40), (30, 10), (16, 16)]]
    assert report.image_tokens == expected and report.min_image_tokens == expected[0]
    assert report.lengths == [len(ds[i].input_ids) for i in range(3)]  # the audit's lengths are the dataset's
    assert f"anyres image tokens per image min {min(expected)}" in report.table()
    assert report.to_dict()["image_tokens_per_image"]["images"] == 3


def test_exact_costs_count_every_tile_and_reach_the_length_cache(data, bpe_tokenizer, tmp_path):
    """What balancing ranks by cost weighs: each record's length and its images' tiles (anyres: base + grid)."""
    from instruct_data.length_cache import exact_lengths

    ds, geo = make(data, bpe_tokenizer)
    tiles = [geo.num_tiles((10, 40)), 0, geo.num_tiles((30, 10)) + geo.num_tiles((16, 16))]
    assert tiles[0] > 1 and tiles[2] > 2
    costs = [ds.exact_cost(i) for i in range(3)]
    assert costs == [(len(ds[i].input_ids), tiles[i]) for i in range(3)]
    lengths = exact_lengths(ds, tmp_path / "cache", workers=1)
    again, _ = make(data, bpe_tokenizer)
    assert again.tiles() == [1, 0, 2]  # before measuring: one an image, as indexed
    assert exact_lengths(again, tmp_path / "cache", workers=1).tolist() == lengths.tolist()
    assert again.tiles() == ds.tiles() == tiles  # read back from the cache
