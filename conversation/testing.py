"""Images for tests of image loading and validation: noise pictures and a PNG that declares a huge size (a bomb's shape)."""
from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image


def noise_image(size: tuple[int, int] = (32, 24), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height while carrying almost no data (a decompression bomb shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
