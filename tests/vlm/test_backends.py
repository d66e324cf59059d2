"""Every vision backend x every projector: the assembled model runs forward + backward with the stated K and widths."""
from __future__ import annotations

import pytest
import torch

from projectors.registry import build_projector
from vlm.testing import sample_ids

PROJECTORS = {  # name -> K for the 16-patch tiny grid
    "linear": 16,
    "identity": 16,
    "mlp1x_gelu": 16,
    "mlp2x_gelu": 16,
    "mlp3x_gelu": 16,
    "pixel_shuffle2x_mlp2x_gelu": 4,
    "avgpool2x_mlp2x_gelu": 4,
}


@pytest.mark.parametrize("encoder", ["clip", "siglip", "timm", "open_clip"])
def test_backend_with_every_projector(tiny, encoder: str) -> None:
    model = tiny.vlm("llama", encoder)
    assert model.config.vision_num_tokens == 16 and model.vision_encoder.hidden_size == 32
    llm_width = model.llm.get_input_embeddings().weight.shape[1]
    pixels = torch.randn(2, 3, 32, 32)
    features = model.vision_encoder(pixels)
    assert features.shape == (2, 16, 32)
    for name, k in PROJECTORS.items():
        torch.manual_seed(0)
        model.projector = build_projector(name, model.vision_encoder.hidden_size, llm_width)
        model.config.projector, model.config.num_image_tokens = name, model.projector.output_tokens(16)
        assert model.config.num_image_tokens == k, name
        assert model.encode_images(pixels).shape == (2, k, llm_width), name
        ids = torch.stack([sample_ids(model, 1, seed=1), sample_ids(model, 1, seed=2)])
        labels = ids.masked_fill(ids == model.config.image_token_id, -100)
        model.zero_grad(set_to_none=True)
        out = model(ids, labels=labels, pixel_values=pixels, image_counts=[1, 1])
        out.loss.backward()
        grads = [p.grad for p in model.projector.parameters()]
        if name == "identity":
            assert grads == []
        else:
            assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
        assert model.llm.get_input_embeddings().weight.grad is not None
