"""LLaVA-NeXT `anyres` geometry: grid pinpoints, best resolution, tiling, unpadding and the exact image-token count.

Sizes are (height, width) throughout, as in HF LlavaNext. One `AnyresGeometry` answers every question the
processor (which tiles), the tokenizer (how many image tokens) and the model (which feature rows) ask, so the
three cannot disagree.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

Size = tuple[int, int]  # (height, width)

# LLaVA-NeXT's range form: "(1x1),...,(3x3)" = every grid from 1x1 to 3x3 tiles, in tiles of the encoder's size.
_RANGE = re.compile(r"^\s*\((\d+)x(\d+)\)\s*,\s*\.\.\.\s*,\s*\((\d+)x(\d+)\)\s*$")
# An upsampled-feature grid is shrunk only when it exceeds the tile cap by more than this factor (per side).
CAP_TOLERANCE = 1.1


def parse_grid_pinpoints(value: Any, tile_size: int) -> tuple[Size, ...]:
    """A list of [h, w] pixel resolutions, or the range form "(AxB),...,(CxD)" (rows x cols, times `tile_size`).

    Every resolution must be a positive multiple of `tile_size` on both sides (tiles must cover it exactly).
    """
    if isinstance(value, str):
        match = _RANGE.match(value)
        if not match:
            raise ValueError(f"image_grid_pinpoints {value!r}: expected a list of [h, w] or the form '(1x1),...,(3x3)'")
        r0, c0, r1, c1 = (int(x) for x in match.groups())
        if r0 < 1 or c0 < 1 or r1 < r0 or c1 < c0:
            raise ValueError(f"image_grid_pinpoints {value!r}: empty or invalid range")
        pairs = [(r * tile_size, c * tile_size) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
    elif isinstance(value, (list, tuple)) and value:
        pairs = []
        for item in value:
            if not isinstance(item, (list, tuple)) or len(item) != 2 or not all(isinstance(x, int) for x in item):
                raise ValueError(f"image_grid_pinpoints: each entry must be [height, width] in pixels, got {item!r}")
            pairs.append((int(item[0]), int(item[1])))
    else:
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [h, w] or a range string, got {value!r}")
    for h, w in pairs:
        if h <= 0 or w <= 0 or h % tile_size or w % tile_size:
            raise ValueError(
                f"image_grid_pinpoints: [{h}, {w}] is not a positive multiple of the encoder's {tile_size}px tiles"
            )
    return tuple(pairs)


def select_best_resolution(size: Size, pinpoints: Sequence[Size]) -> Size:
    """LLaVA-NeXT's rule: the resolution keeping the most of the image's pixels, then the one wasting the fewest.

    The image is scaled (aspect kept) to fit each candidate; effective = its scaled pixel count, capped at the
    original count (upscaling adds nothing); wasted = candidate area - effective. Ties keep the earlier candidate.
    """
    height, width = size
    best: Size | None = None
    best_effective, best_wasted = 0, math.inf
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_h * cand_w - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (cand_h, cand_w), effective, wasted
    if best is None:
        raise ValueError(f"no grid pinpoint fits an image of {height}x{width} pixels")
    return best


def fitted_size(size: Size, target: Size) -> Size:
    """The image resized (aspect kept) to fit `target`: the limiting side exact, the other rounded up, capped."""
    height, width = size
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def unpad_box(size: Size, grid: Size) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the image's content inside a padded `grid` (features), for an image of `size`.

    The padding the processor added to reach the grid's aspect ratio is cut symmetrically (floor of half per side).
    """
    height, width = size
    grid_h, grid_w = grid
    if width / height > grid_w / grid_h:  # wider than the grid: padding above and below
        content = int(round(height * (grid_w / width), 7))
        pad = (grid_h - content) // 2
        return pad, grid_h - pad, 0, grid_w
    content = int(round(width * (grid_h / height), 7))
    pad = (grid_w - content) // 2
    return 0, grid_h, pad, grid_w - pad


@dataclass(frozen=True)
class AnyresGeometry:
    """Tiles of `tile_size` px, `grid_side` x `grid_side` features per tile, candidate resolutions, optional cap."""

    tile_size: int
    grid_side: int
    pinpoints: tuple[Size, ...]
    max_tiles: int | None = None

    def __post_init__(self) -> None:
        if self.tile_size < 1 or self.grid_side < 1:
            raise ValueError(f"tile_size and grid_side must be >= 1, got {self.tile_size}, {self.grid_side}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError(f"anyres_max_tiles must be >= 1, got {self.max_tiles}")
        if not self.pinpoints:
            raise ValueError("anyres needs at least one grid pinpoint")

    @classmethod
    def build(cls, pinpoints: Any, tile_size: int, grid_side: int, max_tiles: int | None = None) -> "AnyresGeometry":
        return cls(tile_size, grid_side, parse_grid_pinpoints(pinpoints, tile_size), max_tiles)

    def best_resolution(self, size: Size) -> Size:
        _check_size(size)
        return select_best_resolution(size, self.pinpoints)

    def grid_shape(self, size: Size) -> Size:
        """(rows, cols) of tiles for an image of `size`."""
        best_h, best_w = self.best_resolution(size)
        return best_h // self.tile_size, best_w // self.tile_size

    def num_tiles(self, size: Size) -> int:
        """Tiles the encoder sees for this image: the grid plus the whole image resized (the base, first)."""
        rows, cols = self.grid_shape(size)
        return rows * cols + 1

    def unpadded_shape(self, size: Size) -> Size:
        """(h, w) in features of the tile grid once the processor's padding is cut off."""
        rows, cols = self.grid_shape(size)
        top, bottom, left, right = unpad_box(size, (rows * self.grid_side, cols * self.grid_side))
        return bottom - top, right - left

    def capped_shape(self, unpadded: Size) -> Size:
        """The feature grid after the tile cap: shrunk (bilinear in the model) when it holds over `max_tiles` tiles' worth."""
        height, width = unpadded
        ratio = self.cap_ratio(unpadded)
        if ratio is None:
            return unpadded
        return int(height // ratio), int(width // ratio)

    def cap_ratio(self, unpadded: Size) -> float | None:
        """The per-side shrink factor the cap applies to `unpadded`, or None when it stays as is."""
        if self.max_tiles is None:
            return None
        height, width = unpadded
        ratio = math.sqrt(height * width / (self.max_tiles * self.grid_side**2))
        return ratio if ratio > CAP_TOLERANCE else None

    def num_tokens(self, size: Size) -> int:
        """Image tokens for an image of `size`: the base tile's features, then each grid row plus one newline."""
        height, width = self.capped_shape(self.unpadded_shape(size))
        return self.grid_side**2 + height * (width + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"tile_size": self.tile_size, "grid_side": self.grid_side,
                "pinpoints": [list(p) for p in self.pinpoints], "max_tiles": self.max_tiles}


def _check_size(size: Size) -> None:
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"image size must be (height, width) >= 1 pixel, got {tuple(size)}")


def tile_image(img: Image.Image, geometry: AnyresGeometry, resample: int) -> list[Image.Image]:
    """An RGB image -> [the whole image resized to a tile, then the grid's tiles row by row], each tile_size square.

    The grid: the image resized (aspect kept) to fit the best resolution, centred on black, cut into tiles.
    """
    side = geometry.tile_size
    size = (img.height, img.width)
    best_h, best_w = geometry.best_resolution(size)
    new_h, new_w = fitted_size(size, (best_h, best_w))
    resized = img if (img.height, img.width) == (new_h, new_w) else img.resize((new_w, new_h), resample=resample)
    canvas = Image.new("RGB", (best_w, best_h), (0, 0, 0))
    canvas.paste(resized, ((best_w - new_w) // 2, (best_h - new_h) // 2))
    base = img if img.size == (side, side) else img.resize((side, side), resample=resample)
    tiles = [base]
    for top in range(0, best_h, side):
        for left in range(0, best_w, side):
            tiles.append(canvas.crop((left, top, left + side, top + side)))
    return tiles

