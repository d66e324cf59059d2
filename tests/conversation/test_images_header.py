"""`image_size`: an image's (height, width) from its header, after EXIF orientation, without decoding pixels."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conversation.errors import ImageLoadError
from conversation.images import image_size, load_image


def test_size_is_height_width_and_follows_exif_rotation(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (40, 10)).save(plain)
    assert image_size(plain) == (10, 40)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: preprocessing's exif_transpose turns 40x10 into 10x40
    Image.new("RGB", (40, 10)).save(rotated, exif=exif)
    assert image_size(rotated) == (40, 10)
    from PIL import ImageOps
    assert ImageOps.exif_transpose(load_image(rotated)).size == (10, 40)  # (w, h): the same image as (h, w) = (40, 10)


def test_bad_files_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="not an image"):
        image_size(junk)
    with pytest.raises(ImageLoadError, match="missing file"):
        image_size(tmp_path / "nope.png")
    big = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(big)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        image_size(big, max_pixels=50)
