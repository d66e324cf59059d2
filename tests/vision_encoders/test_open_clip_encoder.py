"""open_clip backend: tiny custom arch, stem run by hand equals open_clip's own tokens, freezing, save/reload."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from vision_encoders.config import VisionEncoderConfig
from vision_encoders.open_clip_encoder import TINY_OPEN_CLIP_CFG, OpenClipVisionEncoder, create_open_clip_model
from vision_encoders.registry import load_vision_encoder
from vision_encoders.testing import TINY_HIDDEN, TINY_NUM_PATCHES, trainable_parameter_names


def test_shapes_patch_and_cls_patch(tiny_open_clip_spec: str, pixels: torch.Tensor) -> None:
    patch = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec))
    cls_patch = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec, select_feature="cls_patch"))
    assert isinstance(patch, OpenClipVisionEncoder)
    assert (patch.hidden_size, patch.image_size, patch.has_cls_token) == (TINY_HIDDEN, 32, True)
    assert (patch.num_tokens, cls_patch.num_tokens) == (TINY_NUM_PATCHES, TINY_NUM_PATCHES + 1)
    assert patch(pixels).shape == (2, 16, TINY_HIDDEN)
    torch.testing.assert_close(cls_patch(pixels)[:, 1:], patch(pixels), rtol=0, atol=0)


def test_weights_come_from_the_checkpoint(tiny_open_clip_spec: str) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec))
    saved = load_file(tiny_open_clip_spec.split("@", 1)[1])
    for name, tensor in encoder.visual.state_dict().items():
        torch.testing.assert_close(tensor, saved[f"visual.{name}"], rtol=0, atol=0)


def test_last_layer_matches_open_clip_tokens(tiny_open_clip_spec: str, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec, select_layer=-1))
    visual = encoder.visual
    visual.output_tokens = True
    _, tokens = visual(pixels)  # open_clip's own forward: ln_post applied to the patch tokens
    torch.testing.assert_close(visual.ln_post(encoder(pixels)), tokens, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("layer", "block"), [(-2, 0), (-1, 1), (1, 0)])
def test_layer_matches_open_clip_intermediates(tiny_open_clip_spec: str, pixels: torch.Tensor, layer: int,
                                               block: int) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec, select_layer=layer,
                                                      select_feature="cls_patch"))
    out = encoder.visual.forward_intermediates(pixels, indices=[block], intermediates_only=True, output_fmt="NLC",
                                               output_extra_tokens=True)
    expected = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
    torch.testing.assert_close(encoder(pixels), expected, rtol=1e-5, atol=1e-5)


def test_layer_zero_is_the_stem(tiny_open_clip_spec: str, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec, select_layer=0, select_feature="cls_patch"))
    torch.testing.assert_close(encoder(pixels), encoder.visual._embeds(pixels), rtol=0, atol=0)


def test_frozen_by_default_and_unfreeze_last_n(tiny_open_clip_spec: str, pixels: torch.Tensor) -> None:
    assert trainable_parameter_names(load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec))) == set()
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec, select_layer=-1, unfreeze_last_n=1))
    expected = {f"visual.transformer.resblocks.1.{n}" for n, _ in encoder.blocks()[-1].named_parameters()}
    assert trainable_parameter_names(encoder) == expected
    encoder(pixels).sum().backward()
    assert all(p.grad is not None for p in encoder.blocks()[-1].parameters())


def test_save_and_reload_identical(tiny_open_clip_spec: str, tmp_path: Path, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec))
    spec = encoder.save(tmp_path / "vision")
    assert spec == "open_clip:tiny-vit-test@./vision/open_clip_model.safetensors"
    reloaded = load_vision_encoder(VisionEncoderConfig(spec), base_dir=tmp_path)
    torch.testing.assert_close(reloaded(pixels), encoder(pixels), rtol=0, atol=0)
    assert reloaded.image_processor().to_dict() == encoder.image_processor().to_dict()


def test_saved_dir_loads_in_open_clip_itself(tiny_open_clip_spec: str, tmp_path: Path) -> None:
    """Our open_clip_config.json is open_clip's own local-dir layout (the file holds the visual tower only)."""
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec))
    encoder.save(tmp_path / "vision")
    model = open_clip.create_model(f"local-dir:{tmp_path / 'vision'}", load_weights=False)
    assert model.visual.transformer.width == TINY_HIDDEN


def test_full_open_clip_checkpoint(tmp_path: Path, pixels: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = create_open_clip_model(TINY_OPEN_CLIP_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "full.safetensors"))
    config_path = tmp_path / "tiny-full.json"
    config_path.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(config_path)  # registers the built-in style arch name "tiny-full"
    encoder = load_vision_encoder(VisionEncoderConfig(f"open_clip:tiny-full@{tmp_path / 'full.safetensors'}"))
    torch.testing.assert_close(encoder.visual.conv1.weight, model.visual.conv1.weight, rtol=0, atol=0)


def test_download_tag_refused() -> None:
    with pytest.raises(ValueError, match="pretrained tags download weights"):
        load_vision_encoder(VisionEncoderConfig("open_clip:ViT-B-32@openai"))


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="open_clip architecture 'no-such-arch' is unknown"):
        load_vision_encoder(VisionEncoderConfig("open_clip:no-such-arch"))


def test_image_size_override(tiny_open_clip_spec: str) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec, image_size=48))
    assert (encoder.image_size, encoder.num_patches) == (48, 36)
    assert encoder(torch.zeros(1, 3, 48, 48)).shape == (1, 36, TINY_HIDDEN)


def test_train_mode_never_drops_patches(tiny_open_clip_spec: str, pixels: torch.Tensor) -> None:
    from open_clip.transformer import PatchDropout

    encoder = load_vision_encoder(VisionEncoderConfig(tiny_open_clip_spec))
    reference = encoder(pixels)
    encoder.visual.patch_dropout = PatchDropout(0.5)
    encoder.train()
    torch.testing.assert_close(encoder(pixels), reference, rtol=0, atol=0)
