"""HF transformers backend: CLIP and SigLIP vision towers (or the vision half of a full CLIP/SigLIP checkpoint)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionModel, PretrainedConfig, PreTrainedModel, SiglipVisionModel
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from vision_encoders.base import VisionEncoder
from vision_encoders.config import AspectRatio, VisionEncoderConfig
from vision_encoders.preprocess import ImageProcessor

# Explicit model_type -> vision tower class; full CLIP/SigLIP dirs load their vision half through the same class.
HF_VISION_CLASSES: dict[str, type[PreTrainedModel]] = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}
# Full (text + vision) checkpoints whose vision half we take.
_FULL_MODEL_TYPES = {"clip", "siglip"}
# Which families put a CLS token in front of the patches.
HF_HAS_CLS: dict[type[PreTrainedModel], bool] = {CLIPVisionModel: True, SiglipVisionModel: False}
# Normalization defaults when a checkpoint ships no preprocessor_config.json.
_DEFAULT_MEAN_STD: dict[type[PreTrainedModel], tuple[tuple[float, ...], tuple[float, ...]]] = {
    CLIPVisionModel: ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    SiglipVisionModel: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _model_type(path_or_id: str) -> str:
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path_or_id)
    except OSError as err:
        raise ValueError(f"hf vision encoder {path_or_id!r}: cannot read its config.json ({err})") from err
    model_type = config_dict.get("model_type")
    if model_type not in HF_VISION_CLASSES:
        raise ValueError(
            f"hf vision encoder {path_or_id!r}: model_type {model_type!r} is not supported; "
            f"known: {sorted(HF_VISION_CLASSES)}"
        )
    return model_type


def load_hf_vision_tower(path_or_id: str) -> PreTrainedModel:
    """`<VisionClass>.from_pretrained(path_or_id)`; for a full CLIP/SigLIP checkpoint, its vision half.

    Every vision weight must be present. The text tower of a full checkpoint is expected to be left over, so
    transformers' load report (which would list each of its weights) is muted for those."""
    model_type = _model_type(path_or_id)
    model_cls = HF_VISION_CLASSES[model_type]
    full = model_type in _FULL_MODEL_TYPES
    verbosity = hf_logging.get_verbosity()
    if full:
        hf_logging.set_verbosity_error()
    try:
        # float32 whatever the checkpoint stores (transformers' default is the stored dtype): the load policy casts
        model, info = model_cls.from_pretrained(path_or_id, attn_implementation="sdpa", output_loading_info=True,
                                                dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise ValueError(f"hf vision encoder {path_or_id!r}: weights missing from the checkpoint: "
                         f"{sorted(info['missing_keys'])[:8]}")
    stray_vision = sorted(k for k in info["unexpected_keys"] if k.startswith("vision_model."))
    if full and stray_vision:
        raise ValueError(f"hf vision encoder {path_or_id!r}: vision weights that do not fit {model_cls.__name__}: "
                         f"{stray_vision[:8]}")
    return model


def _side(value: Any) -> int | None:
    """An HF size entry (int, {shortest_edge}, {height, width}) as one square side."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if "shortest_edge" in value:
        return int(value["shortest_edge"])
    if "height" in value and "width" in value:
        if value["height"] != value["width"]:
            raise ValueError(f"non-square processor size {value} is not supported")
        return int(value["height"])
    raise ValueError(f"unrecognised processor size entry {value}")


class HFVisionEncoder(VisionEncoder):
    """CLIP / SigLIP vision tower. Features are `hidden_states[select_layer]` (index 0 = embeddings output),
    exactly as HF Llava's `vision_feature_layer`. SigLIP has no CLS token: `patch` and `cls_patch` both return
    every token (HF Llava's `full` strategy)."""

    def __init__(self, config: VisionEncoderConfig, path_or_id: str) -> None:
        super().__init__()
        self.config = config
        self.source = path_or_id
        model = load_hf_vision_tower(path_or_id)
        self.hf_model: PreTrainedModel = model
        self._has_cls = HF_HAS_CLS[type(model)]
        vision_config = model.config
        self._patch_size = int(vision_config.patch_size)
        self._native_size = int(vision_config.image_size)
        self._image_size = int(config.image_size or self._native_size)
        if self._image_size % self._patch_size:
            raise ValueError(f"image_size {self._image_size} is not a multiple of patch size {self._patch_size}")
        num_layers = int(vision_config.num_hidden_layers)
        if not -(num_layers + 1) <= config.select_layer <= num_layers:
            raise ValueError(
                f"select_layer {config.select_layer} out of range for {num_layers} layers "
                f"(hidden_states has {num_layers + 1} entries, 0 = embeddings)"
            )
        self.freeze(config.unfreeze_last_n)

    @property
    def hf_config(self) -> PretrainedConfig:
        """The vision config (CLIPVisionConfig / SiglipVisionConfig), for export to HF Llava."""
        return self.hf_model.config

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config.hidden_size)

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def has_cls_token(self) -> bool:
        return self._has_cls

    @property
    def num_patches(self) -> int:
        return (self._image_size // self._patch_size) ** 2

    def blocks(self) -> list[nn.Module]:
        return list(self.hf_model.encoder.layers)

    def outside_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        if self._image_size == self._native_size:
            return []
        # interpolate_pos_encoding: the embeddings module reads its position embedding's weight directly
        embeddings = getattr(self.hf_model, "vision_model", self.hf_model).embeddings
        return [(embeddings, embeddings.position_embedding.weight)]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        param = next(self.hf_model.parameters())
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        kwargs: dict[str, Any] = {}
        if self._image_size != self._native_size:
            kwargs["interpolate_pos_encoding"] = True
        features = self._hidden_state_at(pixel_values, kwargs)
        if self._has_cls and self.config.select_feature == "patch":
            features = features[:, 1:]
        return features

    def _hidden_state_at(self, pixel_values: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """`hidden_states[select_layer]`, running only the layers it needs: LLaVA's default layer -2 skips the
        last block, which `output_hidden_states=True` on the whole tower would compute and throw away."""
        tower = getattr(self.hf_model, "vision_model", self.hf_model)  # flattened in transformers 5
        hidden = tower.embeddings(pixel_values, **kwargs)
        pre_norm = getattr(tower, "pre_layrnorm", None)  # CLIP has one, SigLIP does not
        if pre_norm is not None:
            hidden = pre_norm(hidden)
        layers = tower.encoder.layers
        wanted = self.config.select_layer % (len(layers) + 1)
        for layer in layers[:wanted]:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def image_processor(self, aspect_ratio: AspectRatio | None = None) -> ImageProcessor:
        """From the checkpoint's preprocessor_config.json when present, else the family's defaults."""
        aspect = aspect_ratio or self.config.image_aspect_ratio
        mean, std = _DEFAULT_MEAN_STD[type(self.hf_model)]
        size, crop, resample, rescale = self._image_size, None, 3, 1 / 255
        proc_file = self._preprocessor_file()
        if proc_file is not None:
            try:
                proc = json.loads(proc_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{proc_file}: invalid JSON ({err})") from err
            mean = tuple(proc.get("image_mean", mean))
            std = tuple(proc.get("image_std", std))
            resample = proc.get("resample", resample)
            rescale = float(proc.get("rescale_factor", rescale))
            proc_size, proc_crop = _side(proc.get("size")), _side(proc.get("crop_size"))
            out_side = proc_crop if proc.get("do_center_crop", proc_crop is not None) else proc_size
            # Keep the checkpoint's resize/crop ratio only when it produces our input size.
            if out_side == self._image_size and proc_size is not None:
                size, crop = proc_size, (proc_crop if proc_crop != proc_size else None)
        return ImageProcessor(size=size, mean=mean, std=std, aspect_ratio=aspect, resample=resample,
                              crop_size=crop, rescale=rescale)

    def _preprocessor_file(self) -> Path | None:
        local = Path(self.source) / "preprocessor_config.json"
        if local.is_file():
            return local
        if Path(self.source).is_dir():
            return None
        try:  # a hub id: only what is already in the local cache (offline), never an error
            found = cached_file(self.source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False)
        except OSError:
            return None
        return Path(found) if found else None

    def save(self, directory: str | Path) -> str:
        """save_pretrained (safetensors) the vision tower, plus the source's preprocessor_config.json, into
        `directory`; returns `hf:./<dirname>` (relative to `directory`'s parent, the checkpoint dir)."""
        directory = Path(directory)
        self.hf_model.save_pretrained(directory, safe_serialization=True)
        proc_file = self._preprocessor_file()
        if proc_file is not None and proc_file.resolve() != (directory / proc_file.name).resolve():
            shutil.copyfile(proc_file, directory / "preprocessor_config.json")
        return f"hf:./{directory.name}"
