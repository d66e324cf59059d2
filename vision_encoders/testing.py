"""Tiny randomly initialised encoders saved in each backend's real format, for tests across the project.

Each `make_tiny_*(directory)` writes a checkpoint into `directory` and returns an absolute spec that
`load_vision_encoder(VisionEncoderConfig(spec))` loads: hidden size 32, 2 blocks, 32x32 images, 8x8 patches
(16 patch tokens; CLIP/timm/open_clip add one CLS token).
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_IMAGE = 32
TINY_PATCH = 8
TINY_HEADS = 2
TINY_NUM_PATCHES = (TINY_IMAGE // TINY_PATCH) ** 2

_TINY_VISION = dict(
    hidden_size=TINY_HIDDEN,
    intermediate_size=2 * TINY_HIDDEN,
    num_hidden_layers=TINY_LAYERS,
    num_attention_heads=TINY_HEADS,
    image_size=TINY_IMAGE,
    patch_size=TINY_PATCH,
)
_TINY_TEXT = dict(
    hidden_size=TINY_HIDDEN,
    intermediate_size=2 * TINY_HIDDEN,
    num_hidden_layers=1,
    num_attention_heads=TINY_HEADS,
    vocab_size=64,
    max_position_embeddings=16,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def make_tiny_clip(directory: str | Path, *, full: bool = False, seed: int = 0) -> str:
    """A CLIPVisionModel (or, with `full`, a whole CLIPModel) plus a PIL CLIP preprocessor config."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    directory = Path(directory)
    torch.manual_seed(seed)
    if full:
        model = CLIPModel(CLIPConfig(text_config=_TINY_TEXT, vision_config=_TINY_VISION, projection_dim=16))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**_TINY_VISION))
    model.save_pretrained(directory, safe_serialization=True)
    CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}
    ).save_pretrained(directory)
    return f"hf:{directory.resolve()}"


def make_tiny_siglip(directory: str | Path, *, full: bool = False, seed: int = 0) -> str:
    """A SiglipVisionModel (or, with `full`, a whole SiglipModel); SigLIP has no CLS token."""
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    directory = Path(directory)
    torch.manual_seed(seed)
    if full:
        model = SiglipModel(SiglipConfig(text_config=_TINY_TEXT, vision_config=_TINY_VISION))
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**_TINY_VISION))
    model.save_pretrained(directory, safe_serialization=True)
    return f"hf:{directory.resolve()}"


def make_tiny_timm(directory: str | Path, *, seed: int = 0, reg_tokens: int = 0) -> str:
    """timm `vit_tiny_patch16_224` shrunk to the tiny size, weights in `model.safetensors`."""
    from vision_encoders.timm_encoder import create_timm_vit, save_timm_model

    directory = Path(directory)
    torch.manual_seed(seed)
    model_args = dict(img_size=TINY_IMAGE, patch_size=TINY_PATCH, embed_dim=TINY_HIDDEN, depth=TINY_LAYERS,
                      num_heads=TINY_HEADS, reg_tokens=reg_tokens)
    model = create_timm_vit("vit_tiny_patch16_224", **model_args)
    return save_timm_model(model, "vit_tiny_patch16_224", model_args, directory, absolute=True)


def make_tiny_open_clip(directory: str | Path, *, seed: int = 0) -> str:
    """An open_clip model of a tiny custom architecture: config json + safetensors state dict."""
    from vision_encoders.open_clip_encoder import (
        TINY_OPEN_CLIP_ARCH,
        TINY_OPEN_CLIP_CFG,
        create_open_clip_model,
        save_open_clip_model,
    )

    directory = Path(directory)
    torch.manual_seed(seed)
    model = create_open_clip_model(TINY_OPEN_CLIP_CFG, checkpoint=None)
    return save_open_clip_model(model, TINY_OPEN_CLIP_ARCH, TINY_OPEN_CLIP_CFG, directory, absolute=True)


def trainable_parameter_names(module: torch.nn.Module) -> set[str]:
    """Names of the parameters that would receive gradients."""
    return {name for name, param in module.named_parameters() if param.requires_grad}
