"""Preprocessing: every PIL mode to RGB, EXIF orientation, pad/crop/resize, parity with CLIPImageProcessorPil."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from vision_encoders.preprocess import ImageProcessor, expand_to_square, to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pattern(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _rgb(img: Image.Image) -> np.ndarray:
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out)


def test_rgba_composited_on_white() -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    pixels[0, 1] = (255, 0, 0, 255)  # opaque red
    pixels[1, 0] = (0, 0, 255, 128)  # half blue
    rgb = _rgb(Image.fromarray(pixels, mode="RGBA"))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (255, 0, 0)
    assert tuple(rgb[1, 0]) == pytest.approx((127, 127, 255), abs=1)


def test_la_and_pa_composited_on_white() -> None:
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")
    assert _rgb(la).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pa.putpixel((0, 0), (1, 0))
    pa.putpixel((1, 0), (1, 255))
    assert _rgb(pa).tolist() == [[[255, 255, 255], [10, 200, 30]]]


def test_palette_with_transparency() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    assert _rgb(img).tolist() == [[[255, 255, 255], [10, 200, 30]]]


def test_palette_and_gray() -> None:
    img = Image.new("P", (1, 1))
    img.putpalette([10, 200, 30] + [0] * 765)
    assert _rgb(img).tolist() == [[[10, 200, 30]]]
    assert _rgb(Image.new("L", (1, 1), 77)).tolist() == [[[77, 77, 77]]]
    assert _rgb(Image.new("1", (1, 1), 1)).tolist() == [[[255, 255, 255]]]


def test_cmyk() -> None:
    assert _rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).tolist() == [[[255, 255, 255]]]
    assert _rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).tolist() == [[[255, 0, 0]]]


def test_16_bit_scaled_not_clipped() -> None:
    values = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    gray = _rgb(img)[..., 0]
    assert gray.tolist() == [[0, 4, 117, 255]]  # round(v * 255 / 65535), not all white


def test_16_bit_png_roundtrip(tmp_path: Path) -> None:
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 500)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as img:
        gray = _rgb(img)[..., 0]
    assert 0 < gray.mean() < 255 and gray.max() == round(63 * 500 * 255 / 65535)


def test_int32_and_float_modes() -> None:
    int_img = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert _rgb(int_img)[..., 0].tolist() == [[0, 255]]
    big = Image.fromarray(np.array([[-100, 0, 300]], dtype=np.int32), mode="I")
    assert _rgb(big)[..., 0].tolist() == [[0, 64, 255]]  # out of 16-bit range: min-max scaled
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert _rgb(unit)[..., 0].tolist() == [[0, 128, 255]]
    wide = Image.fromarray(np.array([[10.0, 20.0]], dtype=np.float32), mode="F")
    assert _rgb(wide)[..., 0].tolist() == [[0, 255]]


def test_exif_orientation_applied() -> None:
    base = _pattern(6, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    base.save(buffer, format="PNG", exif=exif)
    with Image.open(io.BytesIO(buffer.getvalue())) as tagged:
        assert tagged.getexif().get(0x0112) == 6
        shown = to_rgb(tagged)
    assert shown.size == (4, 6)
    assert np.array_equal(np.asarray(shown), np.asarray(base.transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize(("width", "height"), [(37, 23), (23, 37), (50, 50), (101, 64), (9, 40)])
@pytest.mark.parametrize(("size", "crop"), [(17, 17), (20, 16), (32, 32)])
def test_crop_matches_clip_image_processor(width: int, height: int, size: int, crop: int) -> None:
    """transformers 5.23's default CLIPImageProcessor is the torchvision backend; LLaVA used the PIL one,
    which is `CLIPImageProcessorPil`: that is what we match."""
    img = _pattern(width, height, seed=width * height)
    reference = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop},
                                      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    expected = reference(img, return_tensors="pt")["pixel_values"][0]
    ours = ImageProcessor(size=size, crop_size=None if crop == size else crop, mean=CLIP_MEAN, std=CLIP_STD,
                          aspect_ratio="crop")(img)
    assert ours.shape == (3, crop, crop)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_pad_uses_mean_colour() -> None:
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    processor = ImageProcessor(size=40, mean=CLIP_MEAN, std=CLIP_STD, aspect_ratio="pad")
    out = processor(red)
    fill = torch.tensor([int(m * 255) / 255 for m in CLIP_MEAN])
    expected_fill = (fill - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    for row in (0, 9, 30, 39):  # padding rows above and below the 10..29 band
        torch.testing.assert_close(out[:, row, :], expected_fill[:, None].expand(3, 40), rtol=0, atol=1e-6)
    expected_red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[:, 20, :], expected_red[:, None].expand(3, 40), rtol=0, atol=1e-6)


def test_pad_then_resize_and_tall_images() -> None:
    tall = Image.new("RGB", (10, 30), (0, 0, 255))
    squared = expand_to_square(tall, (1, 2, 3))
    assert squared.size == (30, 30)
    assert squared.getpixel((0, 0)) == (1, 2, 3) and squared.getpixel((15, 15)) == (0, 0, 255)
    assert squared.getpixel((10, 0)) == (0, 0, 255) and squared.getpixel((9, 0)) == (1, 2, 3)
    out = ImageProcessor(size=12, mean=(0.5,) * 3, std=(0.5,) * 3, aspect_ratio="pad")(tall)
    assert out.shape == (3, 12, 12)


def test_resize_is_a_straight_resize() -> None:
    img = _pattern(30, 10)
    processor = ImageProcessor(size=8, mean=(0.0,) * 3, std=(1.0,) * 3, aspect_ratio="resize")
    expected = np.asarray(img.resize((8, 8), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    torch.testing.assert_close(processor(img), torch.from_numpy(expected).permute(2, 0, 1), rtol=0, atol=1e-6)


def test_batch() -> None:
    processor = ImageProcessor(size=16, mean=CLIP_MEAN, std=CLIP_STD)
    images = [_pattern(20, 10), Image.new("L", (5, 5), 3), Image.new("RGBA", (16, 16))]
    batch = processor.batch(images)
    assert batch.shape == (3, 3, 16, 16)
    torch.testing.assert_close(batch[1], processor(images[1]), rtol=0, atol=0)
    assert processor.batch([]).shape == (0, 3, 16, 16)


def test_serialization_roundtrip(tmp_path: Path) -> None:
    processor = ImageProcessor(size=20, mean=CLIP_MEAN, std=CLIP_STD, aspect_ratio="crop", crop_size=16, resample=3)
    assert ImageProcessor.from_dict(processor.to_dict()) == processor
    processor.save(tmp_path / "p.json")
    assert ImageProcessor.load(tmp_path / "p.json") == processor
    assert processor.output_size == 16


def test_bad_configs_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown aspect_ratio 'squash'"):
        ImageProcessor(size=8, mean=CLIP_MEAN, std=CLIP_STD, aspect_ratio="squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown resample 'cubic'"):
        ImageProcessor(size=8, mean=CLIP_MEAN, std=CLIP_STD, resample="cubic")
    with pytest.raises(ValueError, match="unknown image processor keys \\['colour'\\]"):
        ImageProcessor.from_dict({"size": 8, "mean": CLIP_MEAN, "std": CLIP_STD, "colour": 1})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        ImageProcessor.load(tmp_path / "bad.json")


@pytest.mark.parametrize(("width", "height"), [(45, 30), (30, 45), (33, 33)])
def test_pad_matches_llava_expand2square_then_clip_processor(width: int, height: int) -> None:
    """LLaVA's pad path: expand2square with the mean colour, then the CLIP processor (shortest edge + crop)."""
    img = _pattern(width, height, seed=3)
    fill = tuple(int(m * 255) for m in CLIP_MEAN)
    reference = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
                                      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    expected = reference(expand_to_square(img, fill), return_tensors="pt")["pixel_values"][0]
    ours = ImageProcessor(size=24, mean=CLIP_MEAN, std=CLIP_STD, aspect_ratio="pad")(img)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_extreme_aspect_ratio_is_refused_before_allocating() -> None:
    from vision_encoders.preprocess import MAX_WORK_PIXELS, geometry_problem

    assert geometry_problem(12_000, 1, "pad", 336) == ("12000x1 needs a 12000x12000 pad-to-square canvas "
                                                       f"(144000000 pixels > limit {MAX_WORK_PIXELS})")
    assert geometry_problem(9_000, 9_000, "pad", 336) is None  # square: no canvas
    assert geometry_problem(1_000, 300, "pad", 336) is None
    assert geometry_problem(12_000, 1, "resize", 336) is None  # straight to S x S
    assert "shortest side of 336" in geometry_problem(1_000, 1, "crop", 336)  # 336 x 336000
    assert geometry_problem(1_000, 100, "crop", 336) is None
    proc = ImageProcessor(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="pad-to-square canvas"):
        proc(Image.new("L", (10_000, 1)))
