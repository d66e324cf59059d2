"""anyres geometry: pinpoints, best resolution, tiling, unpadding and token counts, by hand and against HF LlavaNext."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution as hf_best
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

from vision_encoders.anyres import (
    AnyresGeometry,
    fitted_size,
    parse_grid_pinpoints,
    select_best_resolution,
    tile_image,
    unpad_box,
)

V16 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6's published pinpoints
SIZES = [(1, 20), (20, 1), (1, 1), (3, 2), (100, 200), (200, 100), (300, 100), (1000, 1000), (1000, 2000),
         (3000, 1000), (480, 640), (640, 480), (337, 673), (1, 1000), (1000, 1), (50, 1), (7, 333), (1920, 1080)]


def test_range_form_expands_rows_by_cols_times_the_tile() -> None:
    assert parse_grid_pinpoints("(1x1),...,(2x3)", 10) == ((10, 10), (10, 20), (10, 30), (20, 10), (20, 20), (20, 30))
    assert parse_grid_pinpoints(V16, 336) == tuple(tuple(p) for p in V16)


@pytest.mark.parametrize("bad", ["(1x1)...(3x3)", "(2x2),...,(1x1)", [], [[336]], [[336, 700]], [[0, 336]], 5])
def test_bad_pinpoints_are_refused_with_the_value(bad) -> None:
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        parse_grid_pinpoints(bad, 336)


@pytest.mark.parametrize("size, best", [
    ((100, 200), (336, 672)),  # small: every candidate keeps all pixels; least waste, earliest wins the tie
    ((1000, 2000), (336, 672)),  # wide 1:2: 336x672 and 672x672 keep 225792 px; 336x672 wastes less
    ((1000, 1000), (672, 672)),  # square: 672x672 keeps 451584 px, every other candidate 112896 or 225792... less
    ((3000, 1000), (1008, 336)),  # tall 3:1: 1008x336 keeps 338688 px, 672x672 only 224x672 = 150528
])
def test_best_resolution_hand_computed(size, best) -> None:
    assert select_best_resolution(size, [tuple(p) for p in V16]) == best


def test_best_resolution_matches_transformers_on_many_sizes() -> None:
    pins = parse_grid_pinpoints("(1x1),...,(6x6)", 384)
    rng = np.random.default_rng(0)
    sizes = SIZES + [tuple(int(x) for x in rng.integers(1, 4000, 2)) for _ in range(300)]
    for size in sizes:
        for table in ([tuple(p) for p in V16], pins):
            assert select_best_resolution(size, table) == tuple(hf_best(size, [list(p) for p in table])), size


def test_fitted_size_keeps_aspect_and_fills_the_limiting_side() -> None:
    assert fitted_size((100, 200), (336, 672)) == (336, 672)
    assert fitted_size((301, 100), (1008, 336)) == (1008, 335)  # 100 * 1008/301 = 334.9 -> ceil 335
    # 100 * 672/300 is 224.00000000000003 in floats: rounded up to 225, exactly as transformers does
    assert fitted_size((100, 300), (336, 672)) == (225, 672)
    for size in SIZES:
        for target in V16:
            image = np.zeros((3, *size))
            assert fitted_size(size, tuple(target)) == tuple(get_patch_output_size(image, target, ChannelDimension.FIRST))


@pytest.mark.parametrize("size", SIZES)
def test_grid_tiles_unpadding_and_token_count_match_llava_next(size) -> None:
    tile, patch = 336, 14
    geo = AnyresGeometry.build(V16, tile, tile // patch)
    hf_pins = [list(p) for p in V16]
    assert geo.num_tiles(size) == image_size_to_num_patches(size, hf_pins, tile)
    assert geo.grid_shape(size) == tuple(get_anyres_image_grid_shape(size, hf_pins, tile))
    rows, cols = geo.grid_shape(size)
    features = torch.zeros(1, rows * geo.grid_side, cols * geo.grid_side)
    assert geo.unpadded_shape(size) == tuple(unpad_image(features, size).shape[1:])
    top, bottom, left, right = unpad_box(size, tuple(features.shape[1:]))
    assert (bottom - top, right - left) == geo.unpadded_shape(size)
    fake = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=hf_pins), patch_size=patch,
                           num_additional_image_tokens=0, _get_unpadded_features=None)
    fake._get_unpadded_features = lambda *a: LlavaNextProcessor._get_unpadded_features(fake, *a)
    assert geo.num_tokens(size) == LlavaNextProcessor._get_number_of_features(fake, *size, tile, tile)


def test_square_v16_image_has_the_published_2928_tokens() -> None:
    geo = AnyresGeometry.build(V16, 336, 24)
    assert geo.num_tokens((1000, 1000)) == 576 + 48 * 49 == 2928
    assert geo.num_tiles((1000, 1000)) == 5


@pytest.mark.parametrize("size", SIZES + [(4000, 4000), (1500, 4000), (4000, 900)])
def test_tile_cap_matches_llava_onevision(size) -> None:
    tile, patch = 384, 14  # OneVision: SigLIP 384/14 = 27 features per side, (1x1)...(6x6), anyres_max_9
    pins = "(1x1),...,(6x6)"
    geo = AnyresGeometry.build(pins, tile, tile // patch, max_tiles=9)
    hf_pins = [list(p) for p in parse_grid_pinpoints(pins, tile)]
    fake = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=hf_pins), patch_size=patch,
                           num_additional_image_tokens=0, vision_aspect_ratio="anyres_max_9",
                           num_image_tokens=(tile // patch) ** 2)
    fake._get_unpadded_features = lambda *a: LlavaOnevisionProcessor._get_unpadded_features(fake, *a)
    assert geo.num_tokens(size) == LlavaOnevisionProcessor._get_number_of_features(fake, *size, tile, tile)


def test_cap_shrinks_a_big_grid_and_leaves_a_small_one() -> None:
    geo = AnyresGeometry.build("(1x1),...,(4x4)", 10, 5, max_tiles=4)
    assert geo.unpadded_shape((400, 400)) == (20, 20)  # 16 tiles' worth of features
    assert geo.capped_shape((20, 20)) == (10, 10)  # shrunk by 2 per side to 4 tiles' worth
    assert geo.capped_shape((10, 11)) == (10, 11)  # within 1.1x of the cap: kept
    assert geo.num_tokens((400, 400)) == 25 + 10 * 11


def test_tiny_and_extreme_images_have_sane_shapes() -> None:
    geo = AnyresGeometry.build("(1x1),...,(3x3)", 28, 2)
    for size in [(1, 1), (1, 20), (20, 1), (2, 3)]:
        h, w = geo.unpadded_shape(size)
        rows, cols = geo.grid_shape(size)
        assert 0 <= h <= rows * 2 and 0 <= w <= cols * 2
        assert geo.num_tokens(size) == 4 + h * (w + 1)
    # 1x20 px in a 2x2 feature grid: the content is int(2/20) = 0 rows high, so only the base tile remains (as in HF)
    assert geo.grid_shape((1, 20)) == (1, 1) and geo.unpadded_shape((1, 20)) == (0, 2)
    assert geo.num_tokens((1, 20)) == 4
    assert geo.unpadded_shape((20, 1)) == (2, 0) and geo.num_tokens((20, 1)) == 4 + 2  # 2 newline rows
    with pytest.raises(ValueError, match="height, width"):
        geo.num_tokens((0, 5))


def test_tiles_are_the_base_then_the_grid_row_by_row_on_black() -> None:
    geo = AnyresGeometry.build([[10, 20]], 10, 2)
    img = Image.new("RGB", (40, 10), (255, 0, 0))  # w=40, h=10: fits 20x10 as 20x5, padded 2 rows above, 3 below
    tiles = tile_image(img, geo, Image.Resampling.NEAREST)
    assert len(tiles) == geo.num_tiles((10, 40)) == 3
    assert all(t.size == (10, 10) for t in tiles)
    assert np.asarray(tiles[0]).tolist() == np.asarray(img.resize((10, 10), Image.Resampling.NEAREST)).tolist()
    left = np.asarray(tiles[1])
    assert (left[:2] == 0).all() and (left[2:7] == (255, 0, 0)).all() and (left[7:] == 0).all()
    assert np.array_equal(tiles[1], tiles[2])


@pytest.mark.parametrize("h, w", list(itertools.product([10, 37], [10, 90])))
def test_number_of_tiles_is_what_the_geometry_says(h: int, w: int) -> None:
    geo = AnyresGeometry.build("(1x1),...,(2x3)", 10, 2)
    assert len(tile_image(Image.new("RGB", (w, h)), geo, Image.Resampling.BICUBIC)) == geo.num_tiles((h, w))


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


@pytest.mark.parametrize("width, height", [(56, 56), (80, 40), (30, 90), (13, 200), (100, 33)])
def test_processor_matches_llava_next_image_processor(width: int, height: int) -> None:
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from vision_encoders.preprocess import ImageProcessor

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pins = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
    ours = ImageProcessor(size=28, mean=mean, std=std, aspect_ratio="anyres", grid_pinpoints=pins)
    hf = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                    image_mean=list(mean), image_std=list(std), image_grid_pinpoints=pins)
    img = _photo(width, height)
    pixels, size = ours.process(img)
    expected = hf(img, return_tensors="pt")
    assert size == (height, width) == tuple(expected["image_sizes"][0].tolist())
    assert pixels.shape == expected["pixel_values"][0].shape
    assert pixels.shape[0] == ours.anyres_geometry().num_tiles(size)
    torch.testing.assert_close(pixels, expected["pixel_values"][0], atol=1e-5, rtol=0)
    assert torch.equal(ours(img), pixels) and torch.equal(ours.batch([img, img]), torch.cat([pixels, pixels]))


def test_processor_round_trips_through_its_json(tmp_path) -> None:
    from vision_encoders.preprocess import ImageProcessor

    ours = ImageProcessor(size=28, mean=(0.5,) * 3, std=(0.5,) * 3, aspect_ratio="anyres",
                          grid_pinpoints="(1x1),...,(2x2)", max_tiles=3)
    assert ours.grid_pinpoints == [[28, 28], [28, 56], [56, 28], [56, 56]]
    ours.save(tmp_path / "p.json")
    assert ImageProcessor.load(tmp_path / "p.json") == ours
    with pytest.raises(ValueError, match="grid_pinpoints"):
        ImageProcessor(size=28, mean=(0.5,) * 3, std=(0.5,) * 3, aspect_ratio="anyres")


def test_config_accepts_the_onevision_spelling_and_refuses_half_settings() -> None:
    from vision_encoders.config import VisionEncoderConfig

    cfg = VisionEncoderConfig("hf:x", image_aspect_ratio="anyres_max_9", image_grid_pinpoints="(1x1),...,(6x6)")
    assert (cfg.image_aspect_ratio, cfg.anyres_max_tiles, cfg.anyres) == ("anyres", 9, True)
    assert VisionEncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="needs image_grid_pinpoints"):
        VisionEncoderConfig("hf:x", image_aspect_ratio="anyres")
    with pytest.raises(ValueError, match="need image_aspect_ratio 'anyres'"):
        VisionEncoderConfig("hf:x", image_grid_pinpoints=[[28, 28]])
