"""HF backend: CLIP / SigLIP towers and full checkpoints, layer and token selection, freezing, save/reload."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPVisionModel, SiglipVisionModel

from vision_encoders.config import VisionEncoderConfig
from vision_encoders.hf_encoder import HFVisionEncoder
from vision_encoders.registry import load_vision_encoder
from vision_encoders.testing import TINY_HIDDEN, TINY_NUM_PATCHES, trainable_parameter_names


def _path(spec: str) -> str:
    return spec.removeprefix("hf:")


def test_clip_shapes_patch_and_cls_patch(tiny_clip_spec: str, pixels: torch.Tensor) -> None:
    patch = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec))
    cls_patch = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, select_feature="cls_patch"))
    assert isinstance(patch, HFVisionEncoder)
    assert patch.has_cls_token and patch.hidden_size == TINY_HIDDEN and patch.image_size == 32
    assert (patch.num_patches, patch.num_tokens, cls_patch.num_tokens) == (16, 16, 17)
    out_patch, out_cls = patch(pixels), cls_patch(pixels)
    assert out_patch.shape == (2, 16, TINY_HIDDEN)
    assert out_cls.shape == (2, 17, TINY_HIDDEN)
    torch.testing.assert_close(out_cls[:, 1:], out_patch, rtol=0, atol=0)


@pytest.mark.parametrize("layer", [-1, -2, 0, 1])
def test_clip_layer_matches_hf_hidden_states(tiny_clip_spec: str, pixels: torch.Tensor, layer: int) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, select_layer=layer, select_feature="cls_patch"))
    reference = CLIPVisionModel.from_pretrained(_path(tiny_clip_spec)).eval()
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
        got = encoder(pixels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_layer_minus_one_differs_from_minus_two(tiny_clip_spec: str, pixels: torch.Tensor) -> None:
    last = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, select_layer=-1))(pixels)
    penultimate = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, select_layer=-2))(pixels)
    assert not torch.allclose(last, penultimate)


def test_siglip_has_no_cls_and_returns_every_token(tiny_siglip_spec: str, pixels: torch.Tensor) -> None:
    patch = load_vision_encoder(VisionEncoderConfig(tiny_siglip_spec))
    cls_patch = load_vision_encoder(VisionEncoderConfig(tiny_siglip_spec, select_feature="cls_patch"))
    assert isinstance(patch.hf_model, SiglipVisionModel) and not patch.has_cls_token
    assert patch.num_tokens == cls_patch.num_tokens == TINY_NUM_PATCHES
    reference = SiglipVisionModel.from_pretrained(_path(tiny_siglip_spec)).eval()
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(patch(pixels), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls_patch(pixels), expected, rtol=1e-5, atol=1e-5)


def test_full_clip_dir_gives_its_vision_half(tiny_full_clip_spec: str, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_full_clip_spec, select_layer=-1))
    full = CLIPModel.from_pretrained(_path(tiny_full_clip_spec)).eval()
    assert isinstance(encoder.hf_model, CLIPVisionModel)
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
    torch.testing.assert_close(encoder(pixels), expected, rtol=1e-5, atol=1e-5)


def test_full_siglip_dir_loads(tmp_path: Path, pixels: torch.Tensor) -> None:
    from vision_encoders.testing import make_tiny_siglip

    encoder = load_vision_encoder(VisionEncoderConfig(make_tiny_siglip(tmp_path / "s", full=True)))
    assert isinstance(encoder.hf_model, SiglipVisionModel)
    assert encoder(pixels).shape == (2, TINY_NUM_PATCHES, TINY_HIDDEN)


def test_frozen_by_default(tiny_clip_spec: str, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec))
    assert trainable_parameter_names(encoder) == set()
    assert not encoder(pixels).requires_grad


def test_unfreeze_last_n_trains_exactly_last_blocks(tiny_clip_spec: str, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, select_layer=-1, unfreeze_last_n=1))
    names = trainable_parameter_names(encoder)
    assert names and all(name.startswith("hf_model.encoder.layers.1.") for name in names)
    expected = {f"hf_model.encoder.layers.1.{n}" for n, _ in encoder.blocks()[-1].named_parameters()}
    assert names == expected
    encoder(pixels).sum().backward()
    assert all(p.grad is not None for p in encoder.blocks()[-1].parameters())
    assert all(p.grad is None for p in encoder.blocks()[0].parameters())


def test_save_and_reload_identical(tiny_clip_spec: str, tmp_path: Path, pixels: torch.Tensor) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec))
    spec = encoder.save(tmp_path / "vision")
    assert spec == "hf:./vision"
    assert (tmp_path / "vision" / "model.safetensors").is_file()
    reloaded = load_vision_encoder(VisionEncoderConfig(spec), base_dir=tmp_path)
    torch.testing.assert_close(reloaded(pixels), encoder(pixels), rtol=0, atol=0)
    assert reloaded.image_processor().to_dict() == encoder.image_processor().to_dict()


def test_image_processor_from_preprocessor_config(tiny_clip_spec: str) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, image_aspect_ratio="crop"))
    proc_cfg = json.loads((Path(_path(tiny_clip_spec)) / "preprocessor_config.json").read_text())
    processor = encoder.image_processor()
    assert processor.aspect_ratio == "crop" and processor.output_size == 32
    assert list(processor.mean) == pytest.approx(proc_cfg["image_mean"])
    assert encoder.image_processor("pad").aspect_ratio == "pad"


def test_siglip_default_normalization(tiny_siglip_spec: str) -> None:
    processor = load_vision_encoder(VisionEncoderConfig(tiny_siglip_spec)).image_processor()
    assert processor.mean == (0.5, 0.5, 0.5) and processor.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("fixture", ["tiny_clip_spec", "tiny_siglip_spec"])
def test_image_size_override_interpolates(fixture: str, request: pytest.FixtureRequest) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(request.getfixturevalue(fixture), image_size=48))
    assert encoder.num_patches == 36
    assert encoder(torch.zeros(1, 3, 48, 48)).shape == (1, 36, TINY_HIDDEN)
    assert encoder.image_processor().output_size == 48


def test_bad_select_layer(tiny_clip_spec: str) -> None:
    with pytest.raises(ValueError, match="select_layer 3 out of range"):
        load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, select_layer=3))


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"model_type 'bert' is not supported; known: \['clip'"):
        load_vision_encoder(VisionEncoderConfig(f"hf:{tmp_path}"))


def test_missing_checkpoint_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read its config.json"):
        load_vision_encoder(VisionEncoderConfig(f"hf:{tmp_path / 'nope'}"))


@pytest.mark.parametrize(("fixture", "strategy"), [("tiny_clip_spec", "default"), ("tiny_siglip_spec", "full")])
@pytest.mark.parametrize("layer", [-2, -1])
def test_features_equal_hf_llava_selection(fixture: str, strategy: str, layer: int, request: pytest.FixtureRequest,
                                           pixels: torch.Tensor) -> None:
    """Our (select_layer, patch) is HF Llava's (vision_feature_layer, default/full strategy)."""
    from transformers import LlamaConfig, LlavaConfig, LlavaModel

    encoder = load_vision_encoder(VisionEncoderConfig(request.getfixturevalue(fixture), select_layer=layer))
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64)
    config = LlavaConfig(vision_config=encoder.hf_config.to_dict(), text_config=text.to_dict(),
                         vision_feature_layer=layer, vision_feature_select_strategy=strategy, image_token_id=63)
    llava = LlavaModel(config).eval()
    llava.vision_tower.load_state_dict(encoder.hf_model.state_dict(), strict=True)
    with torch.no_grad():
        expected = torch.stack(llava.get_image_features(pixel_values=pixels).pooler_output)
        got = llava.multi_modal_projector(encoder(pixels))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_half_precision_checkpoint_loads_in_float32(tiny_clip_spec: str, tmp_path: Path) -> None:
    """transformers loads in the stored dtype by default; the tower starts fp32 (the load policy casts it)."""
    half = tmp_path / "clip_fp16"
    CLIPVisionModel.from_pretrained(_path(tiny_clip_spec)).half().save_pretrained(half)
    for name in ("preprocessor_config.json",):
        if (Path(_path(tiny_clip_spec)) / name).is_file():
            (half / name).write_text((Path(_path(tiny_clip_spec)) / name).read_text())
    encoder = load_vision_encoder(VisionEncoderConfig(f"hf:{half}"))
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}


def test_interpolated_position_embedding_is_declared_for_zero3(tiny_clip_spec: str) -> None:
    """With image_size other than the checkpoint's, HF reads the position embedding outside its module's forward."""
    native = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec))
    assert native.outside_parameters() == []
    resized = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, image_size=48))
    (module, param), = resized.outside_parameters()
    assert param is module.position_embedding.weight
