"""Typed configuration of a vision encoder: which checkpoint, which layer, which tokens, which preprocessing."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import re
from typing import Any, Literal

SelectFeature = Literal["patch", "cls_patch"]
AspectRatio = Literal["pad", "crop", "resize", "anyres"]
_ANYRES_MAX = re.compile(r"^anyres_max_(\d+)$")


@dataclass
class VisionEncoderConfig:
    """`spec` names backend and checkpoint explicitly: `hf:<id-or-path>`, `timm:<name>[@<checkpoint-file>]`,
    `open_clip:<arch>[@<pretrained-tag-or-path>]`."""

    spec: str
    select_layer: int = -2
    select_feature: SelectFeature = "patch"
    image_aspect_ratio: AspectRatio = "pad"
    unfreeze_last_n: int = 0
    image_size: int | None = None  # None: the checkpoint's own size
    extra: dict[str, Any] = field(default_factory=dict)
    # anyres (LLaVA-NeXT dynamic resolution): candidate [h, w] resolutions in pixels, or the range form
    # "(1x1),...,(3x3)" in tiles of the encoder's size; `anyres_max_tiles` caps the grid's features (anyres_max_N)
    image_grid_pinpoints: list[list[int]] | str | None = None
    anyres_max_tiles: int | None = None

    def __post_init__(self) -> None:
        match = _ANYRES_MAX.match(str(self.image_aspect_ratio))
        if match:  # LLaVA-OneVision's spelling: anyres plus a tile cap
            if self.anyres_max_tiles not in (None, int(match.group(1))):
                raise ValueError(f"image_aspect_ratio {self.image_aspect_ratio!r} but anyres_max_tiles={self.anyres_max_tiles}")
            self.image_aspect_ratio, self.anyres_max_tiles = "anyres", int(match.group(1))
        if self.image_aspect_ratio == "anyres" and self.image_grid_pinpoints is None:
            raise ValueError("image_aspect_ratio 'anyres' needs image_grid_pinpoints (a list of [h, w] or '(1x1),...,(3x3)')")
        if self.image_aspect_ratio != "anyres" and (self.image_grid_pinpoints is not None or self.anyres_max_tiles):
            raise ValueError(f"image_grid_pinpoints / anyres_max_tiles need image_aspect_ratio 'anyres', "
                             f"not {self.image_aspect_ratio!r}")
        if isinstance(self.image_grid_pinpoints, (list, tuple)):
            self.image_grid_pinpoints = [list(p) if isinstance(p, (list, tuple)) else p for p in self.image_grid_pinpoints]

    @property
    def anyres(self) -> bool:
        return self.image_aspect_ratio == "anyres"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VisionEncoderConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown vision encoder config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
