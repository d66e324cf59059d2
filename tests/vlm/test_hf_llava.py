"""Tests for HF Llava export/import: same logits and greedy outputs as ours, loadable processor, exact round trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vlm.hf.convert import ExportError, export_hf, import_hf
from vlm.testing import pad_batch, sample_ids

CASES = [
    ("clip", -2, "patch", "llama"),
    ("clip", -1, "patch", "llama"),
    ("clip", -2, "cls_patch", "llama"),
    ("clip", -1, "cls_patch", "qwen2"),
    ("siglip", -2, "patch", "llama"),
    ("clip", -2, "patch", "gpt2"),  # tied embeddings: exported untied (HF Llava ties only `embed_tokens`)
    ("clip", -2, "patch", "qwen2_tied"),  # tied embeddings kept tied
]


@pytest.mark.parametrize("encoder,layer,feature,arch", CASES)
def test_export_matches_ours(tiny, tmp_path: Path, encoder: str, layer: int, feature: str, arch: str) -> None:
    model = tiny.vlm(arch, encoder, select_layer=layer, select_feature=feature)
    k = model.config.num_image_tokens
    assert k == (17 if feature == "cls_patch" and encoder == "clip" else 16)
    export_hf(model, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.vision_feature_select_strategy == ("full" if k == 17 or encoder == "siglip" else "default")
    assert hf.config.image_seq_length == k and hf.config.vision_feature_layer == layer
    hf_tied = hf.lm_head.weight is hf.get_input_embeddings().weight
    assert hf_tied == (arch == "qwen2_tied")

    seqs = [sample_ids(model, 2, num_text=3, seed=1), sample_ids(model, 1, num_text=6, seed=2)]
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "left")
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, pixel_values=pixels).logits
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    valid = mask.bool()
    torch.testing.assert_close(theirs[valid], ours[valid], rtol=0, atol=1e-5)

    new = model.generate(ids, mask, pixel_values=pixels, max_new_tokens=6, eos_token_id=[])
    hf_out = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=6, do_sample=False,
                         eos_token_id=None, min_new_tokens=6)
    assert hf_out[:, ids.shape[1]:].tolist() == new.tolist()


def test_processor_loads_and_expands_image_tokens(tiny, tmp_path: Path) -> None:
    model = tiny.vlm("llama", "clip", image_aspect_ratio="crop")
    export_hf(model, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")  # the default torchvision backend resamples differently
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True,
    )
    assert prompt.endswith("ASSISTANT:") and "USER: <image>\nWhat is this?" in prompt
    batch = processor(text=prompt, images=image, return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == model.config.num_image_tokens
    # HF's processor (crop) and ours give the same pixels
    torch.testing.assert_close(batch["pixel_values"][0], model.image_processor(image), rtol=0, atol=1e-5)


def test_siglip_processor_loads(tiny, tmp_path: Path) -> None:
    model = tiny.vlm("llama", "siglip", image_aspect_ratio="resize")
    export_hf(model, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    batch = processor(text="<image>\nhi", images=image, return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 16  # no CLS: all 16 patches
    torch.testing.assert_close(batch["pixel_values"][0], model.image_processor(image), rtol=0, atol=1e-5)


def test_pad_aspect_ratio_warns_that_hf_resizes(tiny, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="cannot pad to square"):
        export_hf(tiny.vlm(image_aspect_ratio="pad"), tmp_path / "hf")


def test_import_export_round_trip_is_exact(tiny, tmp_path: Path) -> None:
    model = tiny.vlm("llama", "clip", select_layer=-1, select_feature="cls_patch")
    export_hf(model, tmp_path / "a")
    imported = import_hf(tmp_path / "a", tmp_path / "ours", template="vicuna_v1")
    assert imported.config.vision.select_layer == -1 and imported.config.vision.select_feature == "cls_patch"
    assert imported.config.image_token_id == model.config.image_token_id
    export_hf(imported, tmp_path / "b")
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ids = sample_ids(model, 1)[None]
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(imported(ids, pixel_values=pixels).logits, model(ids, pixel_values=pixels).logits,
                                   rtol=0, atol=0)


def test_refuses_what_llava_cannot_express(tiny, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="projector 'avgpool2x_mlp2x_gelu' cannot be exported.*only 'mlp2x_gelu'"):
        export_hf(tiny.vlm(projector="avgpool2x_mlp2x_gelu"), tmp_path / "x")
    with pytest.raises(ExportError, match="projector 'linear' cannot be exported"):
        export_hf(tiny.vlm(projector="linear"), tmp_path / "x")
    with pytest.raises(ExportError, match="vision encoder 'timm:.*' cannot be exported.*timm and open_clip"):
        export_hf(tiny.vlm(encoder="timm"), tmp_path / "x")
    assert not (tmp_path / "x").exists()
