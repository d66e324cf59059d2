"""The shared VisionEncoder behaviour, exercised on the real tiny backends: token counts and freezing."""
from __future__ import annotations

import pytest
import torch

from vision_encoders.config import VisionEncoderConfig
from vision_encoders.registry import load_vision_encoder
from vision_encoders.testing import trainable_parameter_names


@pytest.mark.parametrize("fixture", ["tiny_clip_spec", "tiny_siglip_spec", "tiny_timm_spec", "tiny_open_clip_spec"])
def test_every_backend_honours_the_interface(fixture: str, request: pytest.FixtureRequest,
                                             pixels: torch.Tensor) -> None:
    spec = request.getfixturevalue(fixture)
    for feature in ("patch", "cls_patch"):
        encoder = load_vision_encoder(VisionEncoderConfig(spec, select_feature=feature))
        out = encoder(pixels)
        assert out.shape == (2, encoder.num_tokens, encoder.hidden_size)
        assert encoder.num_tokens == encoder.num_patches + int(feature == "cls_patch" and encoder.has_cls_token)
        assert len(encoder.blocks()) == 2
        processor = encoder.image_processor()
        assert processor.output_size == encoder.image_size
        assert processor.aspect_ratio == "pad"


def test_unfreeze_all_and_too_many(tiny_clip_spec: str) -> None:
    encoder = load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, unfreeze_last_n=2))
    block_params = {n for n, _ in encoder.named_parameters() if ".layers." in n}
    assert trainable_parameter_names(encoder) == block_params  # embeddings and norms stay frozen
    encoder.freeze(0)
    assert trainable_parameter_names(encoder) == set()
    with pytest.raises(ValueError, match="unfreeze_last_n=3 but the encoder has 2 blocks"):
        load_vision_encoder(VisionEncoderConfig(tiny_clip_spec, unfreeze_last_n=3))
