"""timm backend: tiny ViT from a safetensors file, prefix tokens, layer selection, freezing, save/reload."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vision_encoders.config import VisionEncoderConfig
from vision_encoders.registry import load_vision_encoder
from vision_encoders.testing import TINY_HIDDEN, TINY_NUM_PATCHES, make_tiny_timm, trainable_parameter_names
from vision_encoders.timm_encoder import TimmVisionEncoder, create_timm_vit


def test_shapes_patch_and_cls_patch(tiny_timm_spec: str, pixels: torch.Tensor) -> None:
    patch = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec))
    cls_patch = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec, select_feature="cls_patch"))
    assert isinstance(patch, TimmVisionEncoder)
    assert (patch.hidden_size, patch.image_size, patch.has_cls_token) == (TINY_HIDDEN, 32, True)
    assert (patch.num_tokens, cls_patch.num_tokens) == (TINY_NUM_PATCHES, TINY_NUM_PATCHES + 1)
    assert patch(pixels).shape == (2, 16, TINY_HIDDEN)
    assert cls_patch(pixels).shape == (2, 17, TINY_HIDDEN)
    torch.testing.assert_close(cls_patch(pixels)[:, 1:], patch(pixels), rtol=0, atol=0)


def test_weights_come_from_the_checkpoint(tiny_timm_spec: str) -> None:
    from safetensors.torch import load_file

    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec))
    saved = load_file(tiny_timm_spec.split("@", 1)[1])
    for name, tensor in encoder.timm_model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)


@pytest.mark.parametrize("layer", [-2, -1])
def test_layer_matches_timm_intermediates(tiny_timm_spec: str, pixels: torch.Tensor, layer: int) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec, select_layer=layer))
    vit = encoder.timm_model
    block_index = layer % 3 - 1  # hidden state i is the output of block i-1
    expected = vit.forward_intermediates(pixels, indices=[block_index], norm=False, output_fmt="NLC",
                                         intermediates_only=True)[0]
    torch.testing.assert_close(encoder(pixels), expected, rtol=1e-5, atol=1e-5)


def test_layer_zero_is_the_stem(tiny_timm_spec: str, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec, select_layer=0, select_feature="cls_patch"))
    vit = encoder.timm_model
    expected = vit.norm_pre(vit._pos_embed(vit.patch_embed(pixels)))
    torch.testing.assert_close(encoder(pixels), expected, rtol=0, atol=0)


def test_last_layer_matches_forward_features(tiny_timm_spec: str, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec, select_layer=-1, select_feature="cls_patch"))
    expected = encoder.timm_model.forward_features(pixels)  # applies the final norm, which we do not
    torch.testing.assert_close(encoder.timm_model.norm(encoder(pixels)), expected, rtol=1e-5, atol=1e-5)
    penultimate = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec, select_layer=-2, select_feature="cls_patch"))
    assert not torch.allclose(penultimate(pixels), encoder(pixels))


def test_register_tokens_are_dropped(tmp_path: Path, pixels: torch.Tensor) -> None:
    spec = make_tiny_timm(tmp_path / "reg", reg_tokens=4)
    patch = load_vision_encoder(VisionEncoderConfig(spec, select_layer=-1))
    cls_patch = load_vision_encoder(VisionEncoderConfig(spec, select_layer=-1, select_feature="cls_patch"))
    full = patch.timm_model.forward_features(pixels)  # [n, 1 + 4 + 16, D], normed
    assert full.shape[1] == 21
    norm = patch.timm_model.norm
    torch.testing.assert_close(norm(patch(pixels)), full[:, 5:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm(cls_patch(pixels)), torch.cat([full[:, :1], full[:, 5:]], 1),
                               rtol=1e-5, atol=1e-5)
    assert cls_patch.num_tokens == 17


def test_no_cls_token_model(tmp_path: Path, pixels: torch.Tensor) -> None:
    from vision_encoders.timm_encoder import save_timm_model

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False, global_pool="avg")
    spec = save_timm_model(create_timm_vit("vit_tiny_patch16_224", **args), "vit_tiny_patch16_224", args,
                           tmp_path / "v", absolute=True)
    encoder = load_vision_encoder(VisionEncoderConfig(spec, select_feature="cls_patch"))
    assert not encoder.has_cls_token and encoder.num_tokens == 16
    assert encoder(pixels).shape == (2, 16, 32)


def test_frozen_by_default_and_unfreeze_last_n(tiny_timm_spec: str, pixels: torch.Tensor) -> None:
    frozen = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec))
    assert trainable_parameter_names(frozen) == set()
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec, select_layer=-1, unfreeze_last_n=1))
    expected = {f"timm_model.blocks.1.{n}" for n, _ in encoder.blocks()[-1].named_parameters()}
    assert trainable_parameter_names(encoder) == expected
    encoder(pixels).sum().backward()
    assert all(p.grad is not None for p in encoder.blocks()[-1].parameters())


def test_save_and_reload_identical(tiny_timm_spec: str, tmp_path: Path, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec))
    spec = encoder.save(tmp_path / "vision")
    assert spec == "timm:vit_tiny_patch16_224@./vision/model.safetensors"
    assert (tmp_path / "vision" / "config.json").is_file()
    reloaded = load_vision_encoder(VisionEncoderConfig(spec), base_dir=tmp_path)
    torch.testing.assert_close(reloaded(pixels), encoder(pixels), rtol=0, atol=0)


def test_image_size_override_resamples_position_embeddings(tiny_timm_spec: str) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec, image_size=48))
    assert (encoder.image_size, encoder.num_patches) == (48, 36)
    assert encoder(torch.zeros(1, 3, 48, 48)).shape == (1, 36, TINY_HIDDEN)


def test_image_processor_from_pretrained_cfg(tiny_timm_spec: str) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec))
    processor = encoder.image_processor()
    assert processor.mean == (0.5, 0.5, 0.5) and processor.output_size == 32
    crop = encoder.image_processor("crop")
    assert (crop.size, crop.crop_size) == (35, 32)  # vit_tiny's crop_pct 0.9: floor(32 / 0.9)


def test_pickle_checkpoint_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not read")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_vision_encoder(VisionEncoderConfig(f"timm:vit_tiny_patch16_224@{bad}"))


def test_mismatched_checkpoint_is_clear(tmp_path: Path) -> None:
    save_file({"foo": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="does not fit the model"):
        load_vision_encoder(VisionEncoderConfig(f"timm:vit_tiny_patch16_224@{tmp_path / 'w.safetensors'}",
                                                extra={}, image_size=32))


def test_unknown_and_non_vit_models() -> None:
    with pytest.raises(ValueError, match="cannot be created"):
        create_timm_vit("no_such_model_xyz")
    with pytest.raises(ValueError, match="only VisionTransformer"):
        create_timm_vit("resnet10t")


def test_missing_checkpoint_warns_random() -> None:
    with pytest.warns(UserWarning, match="weights are random"):
        encoder = load_vision_encoder(VisionEncoderConfig("timm:vit_tiny_patch16_224", image_size=32))
    assert encoder.num_tokens == 4  # 32 / 16 = 2 -> 2x2 patches


def test_train_mode_never_drops_patches(tiny_timm_spec: str, pixels: torch.Tensor) -> None:
    from timm.layers import PatchDropout

    encoder = load_vision_encoder(VisionEncoderConfig(tiny_timm_spec))
    reference = encoder(pixels)
    encoder.timm_model.patch_drop = PatchDropout(0.5, num_prefix_tokens=1)
    encoder.train()
    torch.testing.assert_close(encoder(pixels), reference, rtol=0, atol=0)
