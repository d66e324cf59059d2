"""open_clip backend: the visual VisionTransformer of an open_clip model, weights from a local file only."""
from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg, resize_pos_embed
from open_clip.transformer import VisionTransformer
from safetensors.torch import load_file, save_file
from torch import nn

from vision_encoders.base import VisionEncoder
from vision_encoders.config import AspectRatio, VisionEncoderConfig
from vision_encoders.sidecar import read_sidecar
from vision_encoders.preprocess import ImageProcessor

WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"  # open_clip's own hub layout: {"model_cfg", "preprocess_cfg"} (+ "architecture")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")  # read with torch.load(weights_only=True) by open_clip
TINY_OPEN_CLIP_ARCH = "tiny-vit-test"
TINY_OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def create_open_clip_model(model_cfg: dict[str, Any], checkpoint: str | None = None,
                           image_size: int | None = None, preprocess_cfg: dict[str, Any] | None = None) -> nn.Module:
    """An open_clip model built from a config dict (through open_clip's own `local-dir:` path)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
        (Path(tmp) / CONFIG_NAME).write_text(json.dumps(config))
        # open_clip logs "initialized randomly" here although we load the weights right after; mute it.
        logging.disable(logging.WARNING)
        try:
            model = open_clip.create_model(f"local-dir:{tmp}", load_weights=False, force_image_size=image_size)
        finally:
            logging.disable(logging.NOTSET)
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    return model


def save_open_clip_model(model: nn.Module, arch: str, model_cfg: dict[str, Any], directory: str | Path,
                         *, absolute: bool = False) -> str:
    """Write the visual tower's weights (`visual.*` keys) and the arch config into `directory`; return the spec."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"visual.{k}": v.detach().contiguous() for k, v in model.visual.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    sidecar = {"architecture": arch, "model_cfg": model_cfg, "preprocess_cfg": get_model_preprocess_cfg(model)}
    (directory / CONFIG_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")
    where = str((directory / WEIGHTS_NAME).resolve()) if absolute else f"./{directory.name}/{WEIGHTS_NAME}"
    return f"open_clip:{arch}@{where}"


def _load_weights(model: nn.Module, checkpoint: str) -> None:
    """A full open_clip checkpoint (open_clip's loader, strict) or a visual-only one (`visual.*` keys, strict)."""
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    elif path.suffix in _PICKLE_SUFFIXES:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        return
    else:
        raise ValueError(f"open_clip checkpoint {checkpoint}: unsupported file type (use .safetensors)")
    if not all(key.startswith("visual.") for key in state):
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        return
    resize_pos_embed(state, model)  # open_clip's own: adapts position embeddings to the model's image size
    missing, unexpected = model.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items()},
                                                       strict=False)
    if missing or unexpected:
        raise ValueError(f"open_clip checkpoint {checkpoint} does not fit the visual tower: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")


def _build(arch: str, checkpoint: str | None, image_size: int | None) -> tuple[nn.Module, dict[str, Any]]:
    sidecar = read_sidecar(checkpoint, CONFIG_NAME, arch)
    if sidecar:
        model = create_open_clip_model(sidecar["model_cfg"], checkpoint, image_size, sidecar.get("preprocess_cfg"))
        return model, sidecar["model_cfg"]
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(f"open_clip architecture {arch!r} is unknown (no built-in config and no "
                         f"{CONFIG_NAME} next to the checkpoint)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        if checkpoint in open_clip.list_pretrained_tags_by_model(arch):
            raise ValueError(f"open_clip:{arch}@{checkpoint}: pretrained tags download weights, which is off here; "
                             f"download the file yourself and pass its local path after '@'")
        raise ValueError(f"open_clip checkpoint {checkpoint}: file not found")
    if checkpoint is None:
        warnings.warn(f"open_clip:{arch} has no @<checkpoint>: its weights are random", stacklevel=3)
    return create_open_clip_model(model_cfg, checkpoint, image_size), model_cfg


class OpenClipVisionEncoder(VisionEncoder):
    """open_clip's visual VisionTransformer. Hidden states as HF's: 0 = after the stem (conv1, class and position
    embeddings, ln_pre), i = after resblock i; -1 = last resblock (before ln_post and the projection)."""

    def __init__(self, config: VisionEncoderConfig, arch: str, checkpoint: str | None) -> None:
        super().__init__()
        self.config = config
        self.arch = arch
        model, self.model_cfg = _build(arch, checkpoint, config.image_size)
        if not isinstance(model.visual, VisionTransformer):
            raise ValueError(f"open_clip:{arch}: visual tower is a {type(model.visual).__name__}; "
                             "only open_clip VisionTransformer towers are supported")
        self._preprocess_cfg = get_model_preprocess_cfg(model)
        self.visual: VisionTransformer = model.visual  # the text tower is dropped
        num_layers = len(self.visual.transformer.resblocks)
        if not -(num_layers + 1) <= config.select_layer <= num_layers:
            raise ValueError(f"select_layer {config.select_layer} out of range for {num_layers} blocks "
                             f"({num_layers + 1} hidden states, 0 = embeddings)")
        if config.image_size is not None:
            self.model_cfg = json.loads(json.dumps(self.model_cfg))
            self.model_cfg["vision_cfg"]["image_size"] = config.image_size
        self.freeze(config.unfreeze_last_n)

    @property
    def hidden_size(self) -> int:
        return int(self.visual.transformer.width)

    @property
    def image_size(self) -> int:
        height, width = self.visual.image_size
        if height != width:
            raise ValueError(f"open_clip:{self.arch} has a non-square input {height}x{width}")
        return int(height)

    @property
    def has_cls_token(self) -> bool:
        return True

    @property
    def num_patches(self) -> int:
        grid_h, grid_w = self.visual.grid_size
        return int(grid_h * grid_w)

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def outside_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        pairs = [(self, self.visual.class_embedding), (self, self.visual.positional_embedding)]  # read in `forward`
        for module in self.visual.modules():  # torch's MultiheadAttention reads out_proj's weights, never calls it
            if isinstance(module, nn.MultiheadAttention):
                pairs += [(module, p) for p in module.out_proj.parameters()]
        return pairs

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # open_clip's forward only returns the pooled output or the final tokens; we need a chosen layer.
        vit = self.visual
        x = pixel_values.to(device=vit.conv1.weight.device, dtype=vit.conv1.weight.dtype)
        x = vit.conv1(x).flatten(2).transpose(1, 2)  # [n, grid**2, width]
        cls = vit.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + vit.positional_embedding.to(x.dtype)
        x = vit.ln_pre(x)  # patch_dropout skipped: dropping tokens in train mode would change T
        depth = self.config.select_layer % (len(vit.transformer.resblocks) + 1)
        batch_first = vit.transformer.batch_first
        if not batch_first:
            x = x.transpose(0, 1)
        for block in vit.transformer.resblocks[:depth]:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x if self.config.select_feature == "cls_patch" else x[:, 1:]

    def image_processor(self, aspect_ratio: AspectRatio | None = None) -> ImageProcessor:
        """Mean/std/interpolation from the model's preprocess_cfg (open_clip defaults when absent)."""
        cfg = self._preprocess_cfg
        mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        return ImageProcessor(size=self.image_size, mean=mean, std=std,
                              aspect_ratio=aspect_ratio or self.config.image_aspect_ratio,
                              resample=cfg.get("interpolation", "bicubic"))

    def save(self, directory: str | Path) -> str:
        holder = nn.Module()  # save_open_clip_model reads `.visual`, as on a full open_clip model
        holder.visual = self.visual
        return save_open_clip_model(holder, self.arch, self.model_cfg, directory)

