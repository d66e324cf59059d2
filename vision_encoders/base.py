"""The one interface every vision backend implements: pixels in, a [n, T, D] token grid out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from vision_encoders.config import AspectRatio, VisionEncoderConfig
from vision_encoders.preprocess import ImageProcessor


class VisionEncoder(nn.Module, ABC):
    """A ViT returning the hidden states of `config.select_layer`, CLS dropped (`patch`) or kept (`cls_patch`).

    Frozen after construction unless `config.unfreeze_last_n` > 0 (then the last N blocks train).
    """

    config: VisionEncoderConfig

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Width D of each returned token."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Square side, in pixels, that `forward` expects."""

    @property
    @abstractmethod
    def has_cls_token(self) -> bool:
        """Whether the backbone has a CLS token (SigLIP does not)."""

    @property
    @abstractmethod
    def num_patches(self) -> int:
        """Number of patch tokens for `image_size` (grid side squared)."""

    @property
    def num_tokens(self) -> int:
        """T: tokens per image returned by `forward`."""
        keep_cls = self.config.select_feature == "cls_patch" and self.has_cls_token
        return self.num_patches + (1 if keep_cls else 0)

    @abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] normalized pixels -> [n, T, D]."""

    @abstractmethod
    def blocks(self) -> list[nn.Module]:
        """The transformer blocks in order, for partial unfreezing."""

    def outside_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(module, parameter) pairs where `module`'s forward reads `parameter` although it belongs to a module whose
        own forward never runs (position embeddings, class tokens read by hand). ZeRO-3 gathers a partitioned
        parameter only for its owner's forward unless it is registered with the reader; inside the engine's forward
        DeepSpeed discovers them on first access, but not in a forward outside it (the packing self-check)."""
        return []

    def image_processor(self, aspect_ratio: AspectRatio | None = None) -> ImageProcessor:
        """The matching preprocessing (checkpoint's own mean/std/size when known); aspect ratio from the config."""
        raise NotImplementedError(f"{type(self).__name__} does not define its image processor")

    def save(self, directory: str | Path) -> str:
        """Write the weights in the backend's own format; return the spec reloading them (`./<dir name>`-relative)."""
        raise NotImplementedError(f"{type(self).__name__} cannot save itself")

    def freeze(self, unfreeze_last_n: int = 0) -> None:
        """Freeze everything, then unfreeze the last `unfreeze_last_n` transformer blocks."""
        blocks = self.blocks()
        if not 0 <= unfreeze_last_n <= len(blocks):
            raise ValueError(f"unfreeze_last_n={unfreeze_last_n} but the encoder has {len(blocks)} blocks")
        self.requires_grad_(False)
        if unfreeze_last_n > 0:
            for block in self.blocks()[-unfreeze_last_n:]:
                block.requires_grad_(True)
