"""Tests for conversation.images: path confinement and safe, full decoding."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conversation.testing import noise_image, png_with_declared_size
from conversation.images import (
    ImageLoadError,
    extension_mismatch,
    load_image,
    reason_code,
    resolve_image_path,
)


def _noise(size: tuple[int, int] = (32, 24)) -> Image.Image:
    return noise_image(size, seed=0)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "images"
    (r / "sub").mkdir(parents=True)
    _noise().save(r / "sub" / "a.jpg")
    return r


def _reason(exc_info: pytest.ExceptionInfo[ImageLoadError]) -> str:
    return reason_code(exc_info.value.reason)


# ---- resolve_image_path ----

def test_relative_ref_resolves_inside_root(root: Path) -> None:
    assert resolve_image_path("sub/a.jpg", [root]) == (root / "sub" / "a.jpg").resolve()


def test_roots_tried_in_order(tmp_path: Path, root: Path) -> None:
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    _noise().save(other / "sub" / "b.jpg")
    _noise().save(other / "sub" / "a.jpg")
    assert resolve_image_path("sub/b.jpg", [root, other]) == (other / "sub" / "b.jpg").resolve()
    assert resolve_image_path("sub/a.jpg", [root, other]) == (root / "sub" / "a.jpg").resolve()
    assert resolve_image_path("sub/a.jpg", [other, root]) == (other / "sub" / "a.jpg").resolve()


def test_dotdot_escape_refused_even_when_target_exists(tmp_path: Path, root: Path) -> None:
    _noise().save(tmp_path / "secret.jpg")
    with pytest.raises(ImageLoadError) as exc:
        resolve_image_path("../secret.jpg", [root])
    assert _reason(exc) == "outside image root"
    with pytest.raises(ImageLoadError) as exc:
        resolve_image_path("sub/../../secret.jpg", [root])
    assert _reason(exc) == "outside image root"


def test_dotdot_inside_root_is_fine(root: Path) -> None:
    assert resolve_image_path("sub/../sub/a.jpg", [root]) == (root / "sub" / "a.jpg").resolve()


def test_absolute_paths(tmp_path: Path, root: Path) -> None:
    inside = str((root / "sub" / "a.jpg").resolve())
    assert resolve_image_path(inside, [root]) == Path(inside)
    _noise().save(tmp_path / "outside.jpg")
    with pytest.raises(ImageLoadError) as exc:
        resolve_image_path(str(tmp_path / "outside.jpg"), [root])
    assert _reason(exc) == "outside image root"


def test_symlink_out_of_root_refused(tmp_path: Path, root: Path) -> None:
    _noise().save(tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "link.jpg")
    with pytest.raises(ImageLoadError) as exc:
        resolve_image_path("link.jpg", [root])
    assert _reason(exc) == "outside image root"
    os.symlink(root / "sub" / "a.jpg", root / "inner.jpg")
    assert resolve_image_path("inner.jpg", [root]) == (root / "sub" / "a.jpg").resolve()


def test_missing_empty_and_directory(root: Path) -> None:
    for ref, code in [("nope.jpg", "missing file"), ("", "empty path"), ("sub", "not a file")]:
        with pytest.raises(ImageLoadError) as exc:
            resolve_image_path(ref, [root])
        assert _reason(exc) == code, ref
    with pytest.raises(ValueError, match="at least one image root"):
        resolve_image_path("sub/a.jpg", [])


# ---- load_image ----

def test_loads_rgb_jpeg_fully_decoded(root: Path) -> None:
    img = load_image(root / "sub" / "a.jpg")
    assert img.size == (32, 24) and img.mode == "RGB" and img.format == "JPEG"
    assert np.asarray(img).shape == (24, 32, 3)


def test_keeps_own_mode_cmyk_and_16bit(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 6), (10, 20, 30, 40)).save(tmp_path / "c.jpg")
    Image.fromarray(np.full((6, 8), 40000, dtype=np.uint16)).save(tmp_path / "d.png")
    assert load_image(tmp_path / "c.jpg").mode == "CMYK"
    sixteen = load_image(tmp_path / "d.png")
    assert sixteen.mode.startswith("I") and int(np.asarray(sixteen).max()) == 40000


def test_png_named_jpg_loads_and_is_flagged(tmp_path: Path) -> None:
    _noise().save(tmp_path / "x.jpg", format="PNG")
    img = load_image(tmp_path / "x.jpg")
    assert img.format == "PNG"
    assert extension_mismatch(tmp_path / "x.jpg", img) == "extension '.jpg' but the content is PNG"
    _noise().save(tmp_path / "y.png")
    assert extension_mismatch(tmp_path / "y.png", load_image(tmp_path / "y.png")) is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path: Path, fmt: str) -> None:
    full = tmp_path / "full"
    _noise((64, 64)).save(full, format=fmt)
    data = full.read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as exc:
        load_image(tmp_path / "cut")
    assert _reason(exc) == "truncated"
    assert "cut" in str(exc.value)


def test_zero_byte_non_image_missing(tmp_path: Path) -> None:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("definitely not pixels\n")
    for name, code in [("zero.jpg", "empty file"), ("text.jpg", "not an image"), ("absent.jpg", "missing file")]:
        with pytest.raises(ImageLoadError) as exc:
            load_image(tmp_path / name)
        assert _reason(exc) == code, name


def test_bomb_by_header_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_with_declared_size(200_000, 200_000))
    with pytest.raises(ImageLoadError) as exc:
        load_image(tmp_path / "bomb.png")
    assert _reason(exc) == "decompression bomb"
    # Below PIL's own limit but above ours.
    (tmp_path / "big.png").write_bytes(png_with_declared_size(5000, 4000))
    with pytest.raises(ImageLoadError, match="5000x4000 = 20000000 pixels > limit 1000000") as exc2:
        load_image(tmp_path / "big.png", max_pixels=1_000_000)
    assert _reason(exc2) == "decompression bomb"


def test_max_pixels_limit_is_inclusive(tmp_path: Path) -> None:
    _noise((32, 24)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=32 * 24).size == (32, 24)
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "a.png", max_pixels=32 * 24 - 1)


def test_error_pickles_with_fields(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as exc:
        load_image(tmp_path / "absent.jpg")
    again = pickle.loads(pickle.dumps(exc.value))
    assert again.path == exc.value.path and again.reason == exc.value.reason


def test_multi_picture_camera_jpeg_is_not_a_mismatch(tmp_path: Path) -> None:
    _noise().save(tmp_path / "cam.jpg", format="MPO", save_all=True, append_images=[_noise()])
    img = load_image(tmp_path / "cam.jpg")
    assert img.format == "MPO" and extension_mismatch(tmp_path / "cam.jpg", img) is None
    assert extension_mismatch(tmp_path / "cam.png", img) == "extension '.png' but the content is MPO"


def test_a_truncated_image_is_refused_even_when_a_library_allows_them(tmp_path) -> None:
    # lmms-eval sets PIL's process-wide LOAD_TRUNCATED_IMAGES on import; our loader must still refuse
    from PIL import ImageFile

    whole = tmp_path / "whole.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-40])
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageLoadError, match="truncated|undecodable"):
            load_image(cut)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the library's setting is left as it was
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
