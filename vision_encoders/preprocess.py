"""Image preprocessing: any PIL image to a normalized [3, S, S] tensor (pad-to-square, crop or resize)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from vision_encoders.anyres import AnyresGeometry, parse_grid_pinpoints, tile_image
from vision_encoders.config import AspectRatio
ASPECT_RATIOS: tuple[str, ...] = ("pad", "crop", "resize", "anyres")

# PIL's resampling filters by name; ints are accepted too (HF processor configs store them as ints).
RESAMPLE: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# No intermediate image of the aspect-ratio transform may be larger than PIL's own decompression-bomb limit:
# a 1 x 80M image passes the pixel-count check, but its pad-to-square canvas would be 80M x 80M.
MAX_WORK_PIXELS = 89_478_485

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, honouring EXIF orientation.

    Transparency is composited on white. 16-bit images are scaled to 8 bits (x 255/65535), not clipped.
    Mode `I` (32-bit int) is read as 16-bit data when it fits in [0, 65535], else min-max scaled.
    Mode `F` is read as [0, 1] when it fits there, else min-max scaled.
    """
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    if mode in _UINT16_MODES:
        return _gray_array_to_rgb(np.asarray(img, dtype=np.float64) * (255.0 / 65535.0))
    if mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "I" and lo >= 0 and hi <= 65535:
            return _gray_array_to_rgb(values * (255.0 / 65535.0))
        if mode == "F" and lo >= 0 and hi <= 1:
            return _gray_array_to_rgb(values * 255.0)
        span = hi - lo
        return _gray_array_to_rgb((values - lo) * (255.0 / span) if span > 0 else np.zeros_like(values))
    return img.convert("RGB")


def geometry_problem(width: int, height: int, aspect_ratio: str, size: int,
                     limit: int = MAX_WORK_PIXELS) -> str | None:
    """Why the `aspect_ratio` transform of a width x height image would allocate over `limit` pixels, else None.

    Known from the size alone, so it is checked before anything is allocated (or even decoded)."""
    if width <= 0 or height <= 0:
        return f"zero-sized image {width}x{height}"
    short, long = sorted((width, height))
    if aspect_ratio == "pad" and short != long and long * long > limit:
        return (f"{width}x{height} needs a {long}x{long} pad-to-square canvas "
                f"({long * long} pixels > limit {limit})")
    if aspect_ratio == "crop" and short != size:
        resized = size * int(size * long / short)
        if resized > limit:
            return f"{width}x{height} resized to a shortest side of {size} is {resized} pixels (> limit {limit})"
    return None


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA's pad-to-square: the image centred on a square canvas of colour `fill`."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def _resize_shortest_edge(img: Image.Image, size: int, resample: int) -> Image.Image:
    # Same output size rule as transformers' get_resize_output_image_size(default_to_square=False).
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return img.resize(new_size, resample=resample)


def _center_crop(img: Image.Image, side: int) -> Image.Image:
    # Same offsets as transformers' center_crop: (dim - crop) // 2; pads with black if the image is smaller.
    width, height = img.size
    if width < side or height < side:
        canvas = Image.new("RGB", (max(width, side), max(height, side)), (0, 0, 0))
        canvas.paste(img, ((max(width, side) - width) // 2, (max(height, side) - height) // 2))
        img, (width, height) = canvas, canvas.size
    top, left = (height - side) // 2, (width - side) // 2
    return img.crop((left, top, left + side, top + side))


@dataclass
class ImageProcessor:
    """Turns PIL images into normalized pixel tensors of side `output_size` (= crop_size or size).

    `pad`: expand to square with the mean colour, resize to S x S. `crop`: resize the shortest side to
    `size`, centre-crop S (matches transformers' PIL `CLIPImageProcessorPil`). `resize`: straight to S x S.
    `anyres` (LLaVA-NeXT): `__call__` returns [n_tiles, 3, S, S], the whole image resized to S x S first, then
    the tiles of the best of `grid_pinpoints` ([h, w] pixels) row by row (matches `LlavaNextImageProcessorPil`).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    aspect_ratio: AspectRatio = "pad"
    resample: str | int = "bicubic"
    crop_size: int | None = None
    rescale: float = 1 / 255
    extra: dict[str, Any] = field(default_factory=dict)
    grid_pinpoints: list[list[int]] | None = None  # anyres only: candidate resolutions, [h, w] pixels
    max_tiles: int | None = None  # anyres only: the tile cap (counted by the model, recorded here for export)

    def __post_init__(self) -> None:
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"unknown aspect_ratio {self.aspect_ratio!r}; known: {list(ASPECT_RATIOS)}")
        if self.aspect_ratio == "anyres":
            if not self.grid_pinpoints:
                raise ValueError("aspect_ratio 'anyres' needs grid_pinpoints")
            self.grid_pinpoints = [list(p) for p in parse_grid_pinpoints(self.grid_pinpoints, self.output_size)]
        if isinstance(self.resample, str) and self.resample not in RESAMPLE:
            raise ValueError(f"unknown resample {self.resample!r}; known: {sorted(RESAMPLE)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got mean={self.mean} std={self.std}")
        self.mean = tuple(float(m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(s) for s in self.std)  # type: ignore[assignment]

    @property
    def output_size(self) -> int:
        return self.crop_size or self.size

    @property
    def fill_color(self) -> tuple[int, int, int]:
        return tuple(int(m * 255) for m in self.mean)  # type: ignore[return-value]

    def _filter(self) -> int:
        return RESAMPLE[self.resample] if isinstance(self.resample, str) else int(self.resample)

    def size_problem(self, width: int, height: int) -> str | None:
        """Why an image of this size cannot be transformed within MAX_WORK_PIXELS, else None (see geometry_problem)."""
        return geometry_problem(width, height, self.aspect_ratio, self.size)

    def geometry(self, img: Image.Image) -> Image.Image:
        """RGB conversion plus the aspect-ratio transform, before normalization (useful to inspect)."""
        if self.anyres:
            raise ValueError("anyres gives several tiles per image: use process() or tile_image()")
        problem = self.size_problem(*img.size)
        if problem:  # callers check at load time (load_image(check_size=...)); this is the last guard
            raise ValueError(f"image too extreme to preprocess: {problem}")
        img = to_rgb(img)
        side, resample = self.output_size, self._filter()
        if self.aspect_ratio == "pad":
            img = expand_to_square(img, self.fill_color)
            return img if img.size == (side, side) else img.resize((side, side), resample=resample)
        if self.aspect_ratio == "crop":
            if min(img.size) != self.size:
                img = _resize_shortest_edge(img, self.size, resample)
            return _center_crop(img, side)
        return img if img.size == (side, side) else img.resize((side, side), resample=resample)

    @property
    def anyres(self) -> bool:
        return self.aspect_ratio == "anyres"

    def anyres_geometry(self, grid_side: int = 1) -> AnyresGeometry:
        """The tiling geometry (`grid_side`: features per tile side, which only the token count needs)."""
        if not self.anyres:
            raise ValueError(f"aspect_ratio {self.aspect_ratio!r} has no anyres geometry")
        pinpoints = tuple(tuple(p) for p in self.grid_pinpoints or ())
        return AnyresGeometry(self.output_size, grid_side, pinpoints, self.max_tiles)  # type: ignore[arg-type]

    def _normalize(self, img: Image.Image) -> torch.Tensor:
        array = np.asarray(img, dtype=np.float32)  # [S, S, 3]
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1) * self.rescale
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (pixels - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """[3, S, S]; with anyres [n_tiles, 3, S, S] (see `process` for the size the tokenizer counts from)."""
        if self.anyres:
            return self.process(img)[0]
        return self._normalize(self.geometry(img))

    def process(self, img: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """(pixels, (height, width) after RGB conversion and EXIF orientation): [n, 3, S, S], n = 1 unless anyres."""
        rgb = to_rgb(img)
        size = (rgb.height, rgb.width)
        if not self.anyres:
            return self._normalize(self.geometry(rgb)).unsqueeze(0), size
        tiles = tile_image(rgb, self.anyres_geometry(), self._filter())
        return torch.stack([self._normalize(tile) for tile in tiles]), size

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """[n, 3, S, S] for n images; with anyres every image's tiles, concatenated in order."""
        side = self.output_size
        if not images:
            return torch.empty(0, 3, side, side)
        if self.anyres:
            return torch.cat([self(img) for img in images])
        return torch.stack([self(img) for img in images])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageProcessor":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown image processor keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ImageProcessor":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read image processor config {path}: {err}") from err
        return cls.from_dict(data)
