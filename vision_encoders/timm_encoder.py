"""timm backend: VisionTransformer-family models, weights from a local safetensors file (never a download)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from vision_encoders.base import VisionEncoder
from vision_encoders.config import AspectRatio, VisionEncoderConfig
from vision_encoders.sidecar import read_sidecar
from vision_encoders.preprocess import ImageProcessor

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"  # timm's own hub layout: architecture, model_args, pretrained_cfg
_PRETRAINED_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def create_timm_vit(name: str, **model_args: Any) -> VisionTransformer:
    """`timm.create_model(name, pretrained=False, num_classes=0, **model_args)`, checked to be a ViT."""
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **model_args)
    except RuntimeError as err:
        raise ValueError(f"timm model {name!r} cannot be created: {err}") from err
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"timm model {name!r} is a {type(model).__name__}; only VisionTransformer models are supported")
    return model


def save_timm_model(model: VisionTransformer, name: str, model_args: dict[str, Any], directory: str | Path,
                    *, absolute: bool = False) -> str:
    """Write `model.safetensors` + timm's `config.json` into `directory`; return the reloading spec
    (`timm:<name>@./<dirname>/model.safetensors`, relative to the parent dir, unless `absolute`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    pretrained = {k: model.pretrained_cfg[k] for k in _PRETRAINED_KEYS if k in model.pretrained_cfg}
    pretrained["input_size"] = [3, *model.patch_embed.img_size]
    sidecar = {"architecture": name, "num_classes": 0, "model_args": model_args, "pretrained_cfg": pretrained}
    (directory / CONFIG_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    where = str((directory / WEIGHTS_NAME).resolve()) if absolute else f"./{directory.name}/{WEIGHTS_NAME}"
    return f"timm:{name}@{where}"


def _check_checkpoint(checkpoint: str) -> None:
    path = Path(checkpoint)
    if path.suffix != ".safetensors":
        raise ValueError(f"timm checkpoint {checkpoint}: only .safetensors files are loaded (no unpickling)")
    if not path.is_file():
        raise ValueError(f"timm checkpoint {checkpoint}: file not found")


def _load_weights(model: VisionTransformer, checkpoint: str) -> None:
    state = load_file(checkpoint)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # classifier head is not used
    state = checkpoint_filter_fn(state, model)  # timm's own: resamples position embeddings to our img_size
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"timm checkpoint {checkpoint} does not fit the model: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")


class TimmVisionEncoder(VisionEncoder):
    """A timm VisionTransformer. Hidden states are indexed like HF's: 0 = after the stem (patch embed, position
    embedding, norm_pre), i = after block i; -1 = last block (before the final norm). `patch` drops every prefix
    token (CLS and registers), `cls_patch` keeps CLS (registers are always dropped)."""

    def __init__(self, config: VisionEncoderConfig, name: str, checkpoint: str | None) -> None:
        super().__init__()
        self.config = config
        self.name = name
        if checkpoint is not None:
            _check_checkpoint(checkpoint)
        sidecar = read_sidecar(checkpoint, CONFIG_NAME, name)
        self.model_args: dict[str, Any] = dict(sidecar.get("model_args", {}))
        if config.image_size is not None:
            self.model_args["img_size"] = config.image_size
        self.timm_model = create_timm_vit(name, **self.model_args)
        if checkpoint is None:
            warnings.warn(f"timm:{name} has no @<checkpoint>: its weights are random", stacklevel=2)
        else:
            _load_weights(self.timm_model, checkpoint)
        self._pretrained_cfg = dict(self.timm_model.pretrained_cfg) | sidecar.get("pretrained_cfg", {})
        num_layers = len(self.timm_model.blocks)
        if not -(num_layers + 1) <= config.select_layer <= num_layers:
            raise ValueError(f"select_layer {config.select_layer} out of range for {num_layers} blocks "
                             f"({num_layers + 1} hidden states, 0 = embeddings)")
        self.freeze(config.unfreeze_last_n)

    @property
    def hidden_size(self) -> int:
        return int(self.timm_model.embed_dim)

    @property
    def image_size(self) -> int:
        height, width = self.timm_model.patch_embed.img_size
        if height != width:
            raise ValueError(f"timm:{self.name} has a non-square input {height}x{width}")
        return int(height)

    @property
    def has_cls_token(self) -> bool:
        return self.timm_model.cls_token is not None

    @property
    def num_patches(self) -> int:
        grid_h, grid_w = self.timm_model.patch_embed.grid_size
        return int(grid_h * grid_w)

    def blocks(self) -> list[nn.Module]:
        return list(self.timm_model.blocks)

    def outside_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        # `forward` calls `vit._pos_embed` by hand: pos_embed, cls_token and reg_token are the ViT's own parameters
        return [(self, p) for p in self.timm_model.parameters(recurse=False)]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vit = self.timm_model
        param = next(vit.parameters())
        x = pixel_values.to(device=param.device, dtype=param.dtype)
        # patch_drop is skipped on purpose: dropping tokens in train mode would break the fixed T the projector sees.
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        depth = self.config.select_layer % (len(vit.blocks) + 1)
        for block in vit.blocks[:depth]:
            x = block(x)
        patches = x[:, vit.num_prefix_tokens:]
        if self.config.select_feature == "cls_patch" and self.has_cls_token:
            return torch.cat([x[:, :1], patches], dim=1)
        return patches

    def image_processor(self, aspect_ratio: AspectRatio | None = None) -> ImageProcessor:
        """Mean/std/interpolation from the checkpoint's pretrained_cfg; `crop` resizes to S / crop_pct first."""
        cfg, side = self._pretrained_cfg, self.image_size
        crop_pct = cfg.get("crop_pct")
        aspect = aspect_ratio or self.config.image_aspect_ratio
        size, crop = side, None
        if aspect == "crop" and crop_pct and crop_pct < 1:
            size, crop = int(math.floor(side / crop_pct)), side
        interpolation = cfg.get("interpolation") or "bicubic"
        return ImageProcessor(size=size, mean=tuple(cfg.get("mean", (0.5, 0.5, 0.5))),
                              std=tuple(cfg.get("std", (0.5, 0.5, 0.5))), aspect_ratio=aspect,
                              resample=interpolation, crop_size=crop)

    def save(self, directory: str | Path) -> str:
        model_args = {k: v for k, v in self.model_args.items()}
        return save_timm_model(self.timm_model, self.name, model_args, directory)
