"""Typed configuration of a vision encoder: which checkpoint, which layer, which tokens, which preprocessing."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SelectFeature = Literal["patch", "cls_patch"]
AspectRatio = Literal["pad", "crop", "resize"]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VisionEncoderConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown vision encoder config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
