"""Stage-0 ViT: CLIP's own contrastive loss falls, retrieval beats chance, and `hf:` loads the vision half."""
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from train.stage0.vit import encode_captions, load_split, normalize, pretrain_vit


def test_captions_end_with_the_pooling_marker(world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    images, captions = load_split(world, "test")
    assert images.dtype == torch.uint8 and images.shape == (32, 3, 32, 32)
    ids = encode_captions(captions, tok, 48)
    assert (ids == tok.pad_token_id).any(dim=1).all()  # every caption has its end marker


@pytest.mark.slow  # ~8 s alone on one thread: 100 CLIP steps are needed to leave the ln(N) plateau
def test_short_run_lowers_contrastive_loss_and_saves_a_loadable_vit(world: Path, tmp_path: Path, tiny_vit) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "vit"
    m = pretrain_vit(world, out, tiny_vit, log_every=0)
    assert m["final_train_loss"] < m["first_train_loss"] - 0.5, m
    assert m["retrieval"]["num_candidates"] == 32
    r = m["retrieval"]
    assert max(r["image_to_text_top1"], r["text_to_image_top1"]) >= 2 * r["chance"], r  # untrained: about chance
    vision = CLIPVisionModel.from_pretrained(str(out))
    assert vision.config.image_size == 32 and vision.config.patch_size == 8
    processor = CLIPImageProcessor.from_pretrained(str(out))
    images, _ = load_split(world, "test")
    pil = __import__("PIL.Image", fromlist=["Image"]).fromarray(images[0].permute(1, 2, 0).numpy())
    pixels = processor(pil, return_tensors="pt").pixel_values
    assert torch.allclose(pixels, normalize(images[:1]), atol=1e-5)  # the saved processor matches training
    with torch.no_grad():
        hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert hidden[-1].shape == (1, 1 + 16, 32)
