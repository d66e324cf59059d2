"""anyres in the model: the learned `image_newline`, and tile features packed per image as HF LlavaNext does.

Per image: the base tile's K features, then the tile grid's features reassembled into one map, unpadded back to
the image's aspect ratio, shrunk by the tile cap if set, with `image_newline` after each row. The count per
image is `AnyresGeometry.num_tokens`, the formula tokenization used, so a mismatch is an error, never a shift.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from projectors.base import Projector
from vision_encoders.anyres import AnyresGeometry, unpad_box
from vision_encoders.base import VisionEncoder
from vision_encoders.config import VisionEncoderConfig
from vision_encoders.preprocess import ImageProcessor
from vlm.tokens import embedding_width

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel

NEWLINE = "image_newline"  # a submodule of the projector (trained, frozen and saved with it)
NEWLINE_WEIGHT = NEWLINE + ".weight"  # its key in the projector's state dict (projector.safetensors)


def check_anyres(vision: VisionEncoderConfig, encoder: VisionEncoder, projector: Projector, projector_name: str) -> int:
    """The features per tile side; a clear error for what anyres cannot tile (CLS kept, token-reducing projectors)."""
    tokens = encoder.num_tokens
    if tokens != encoder.num_patches:
        raise ValueError(f"anyres needs the patch grid alone; select_feature={vision.select_feature!r} keeps the CLS token "
                         "(use select_feature 'patch')")
    k = projector.output_tokens(tokens)
    side = math.isqrt(k)
    if k != tokens or side * side != k:
        raise ValueError(f"anyres with projector {projector_name!r} is not supported: it maps {tokens} tokens to {k}, but "
                         "anyres lays each tile's features out on the square patch grid (use a one-to-one projector "
                         "such as mlp2x_gelu)")
    return side


def anyres_processor(vision: VisionEncoderConfig, encoder: VisionEncoder) -> ImageProcessor:
    """The encoder's own processor (mean, std, size, filter) switched to anyres tiling."""
    base = encoder.image_processor(aspect_ratio="resize")
    return dataclasses.replace(base, aspect_ratio="anyres", grid_pinpoints=vision.image_grid_pinpoints,  # type: ignore[arg-type]
                               max_tiles=vision.anyres_max_tiles, crop_size=None, size=base.output_size)


class ImageNewline(nn.Module):
    """The learned row appended after each row of grid features. A module called for its value, so that ZeRO-3
    gathers the (partitioned) parameter for the call, as it does for any module's forward."""

    def __init__(self, width: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, dtype=dtype) / math.sqrt(width))  # HF's init

    def forward(self) -> torch.Tensor:
        return self.weight * 1  # a new tensor: ZeRO-3 may re-partition the parameter after the call


def attach_image_newline(projector: Projector, width: int) -> None:
    """Give the projector a learned `image_newline` row of `width` (its submodule, so saved and trained with it)."""
    param = next(projector.parameters(), None)
    projector.add_module(NEWLINE, ImageNewline(width, param.dtype if param is not None else torch.float32))


def geometry_of(model: "VisionLanguageModel") -> AnyresGeometry:
    return model.image_processor.anyres_geometry(grid_side=math.isqrt(model.config.num_image_tokens))


def pack_image(tiles: torch.Tensor, size: tuple[int, int], geometry: AnyresGeometry, newline: torch.Tensor) -> torch.Tensor:
    """[n_tiles, K, D] projected tile features of one image -> [num_tokens(size), D]."""
    side = geometry.grid_side
    rows, cols = geometry.grid_shape(size)
    base, grid = tiles[0], tiles[1:]
    width = tiles.shape[-1]
    # (rows, cols, side, side, D) -> one map (rows * side, cols * side, D), rows of tiles kept in reading order
    grid = grid.reshape(rows, cols, side, side, width).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, width)
    top, bottom, left, right = unpad_box(size, (rows * side, cols * side))
    grid = grid[top:bottom, left:right]
    ratio = geometry.cap_ratio((bottom - top, right - left))
    if ratio is not None:
        height, wide = geometry.capped_shape((bottom - top, right - left))
        grid = F.interpolate(grid.permute(2, 0, 1)[None], [height, wide], mode="bilinear")[0].permute(1, 2, 0)
    column = newline.to(grid.dtype).expand(grid.shape[0], 1, width)
    grid = torch.cat([grid, column], dim=1).reshape(-1, width)
    return torch.cat([base, grid], dim=0)


def image_rows(
    model: "VisionLanguageModel",
    tokens_per_sample: list[int],
    image_sizes: Sequence[Sequence[int]] | None,
    image_counts: torch.Tensor | list[int] | None,
    pixel_values: torch.Tensor | None = None,
    vision_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """All images' packed features in order, [sum of counts, D]; counts checked against the image-token positions."""
    if image_sizes is None:
        raise ValueError("an anyres model needs image_sizes ((height, width) per image) with its pixel_values")
    sizes = [(int(h), int(w)) for h, w in image_sizes]
    geometry = geometry_of(model)
    tiles = [geometry.num_tiles(size) for size in sizes]
    counts = [geometry.num_tokens(size) for size in sizes]
    given = (pixel_values if pixel_values is not None else vision_features).shape[0]  # type: ignore[union-attr]
    if sum(tiles) != given:
        raise ValueError(f"{len(sizes)} image(s) of sizes {sizes} need {sum(tiles)} tiles ({tiles}), got {given}")
    _check_counts(tokens_per_sample, counts, image_counts)
    if not sizes:
        width = embedding_width(model.llm)
        return torch.empty(0, width, device=model.device, dtype=model.dtype)
    projected = model.encode_images(pixel_values) if pixel_values is not None else model.project(vision_features)
    newline = getattr(model.projector, NEWLINE)()
    packed = [pack_image(chunk, size, geometry, newline) for chunk, size in zip(projected.split(tiles), sizes)]
    return torch.cat(packed)


def _check_counts(tokens: list[int], counts: list[int], image_counts: torch.Tensor | list[int] | None) -> None:
    if image_counts is None:
        if sum(tokens) != sum(counts):
            raise ValueError(f"batch holds {sum(tokens)} image-token positions (per sample {tokens}) but its "
                             f"{len(counts)} anyres image(s) give {sum(counts)} features ({counts})")
        return
    per_sample = [int(c) for c in (image_counts.tolist() if torch.is_tensor(image_counts) else image_counts)]
    if len(per_sample) != len(tokens):
        raise ValueError(f"image_counts has {len(per_sample)} entries for a batch of {len(tokens)} samples")
    if sum(per_sample) != len(counts):
        raise ValueError(f"image_counts sum to {sum(per_sample)} but {len(counts)} image sizes were given")
    start = 0
    for index, (found, n) in enumerate(zip(tokens, per_sample)):
        mine = counts[start:start + n]
        start += n
        if found != sum(mine):
            raise ValueError(f"sample {index}: {found} image-token positions but its {n} anyres image(s) give "
                             f"{sum(mine)} features ({mine}); the tokenizer and the model disagree on image sizes")
