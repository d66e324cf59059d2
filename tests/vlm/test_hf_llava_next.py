"""HF LlavaNext parity for anyres models: same logits and greedy outputs, same processor, exact round trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from vlm.anyres_features import geometry_of
from vlm.hf.convert import ExportError, export_hf, import_hf
from vlm.hf.llava_next import to_llava_next
from vlm.testing import pad_batch

PINS = "(1x1),...,(3x3)"
SHAPES = {"square": (64, 64), "wide": (128, 64), "tall": (32, 96)}  # PIL (width, height): 1:1, 2:1, 1:3


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")


def prompt(model, counts: list[int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    pieces = [torch.tensor([model.tokenizer.bos_token_id])]
    for k in counts:
        pieces += [torch.full((k,), model.config.image_token_id), torch.randint(3, 100, (2,), generator=gen)]
    return torch.cat([*pieces, torch.randint(3, 100, (3,), generator=gen)])


def batch_of(model, groups: list[list[str]]):
    """Left-padded ids for samples holding the named images, plus every image's tiles and sizes in order."""
    geo = geometry_of(model)
    seqs, tiles, sizes = [], [], []
    for seed, names in enumerate(groups):
        processed = [model.image_processor.process(photo(SHAPES[n], seed=i)) for i, n in enumerate(names)]
        tiles += [p for p, _ in processed]
        sizes += [s for _, s in processed]
        seqs.append(prompt(model, [geo.num_tokens(s) for _, s in processed], seed))
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "left")
    return ids, mask, torch.cat(tiles), sizes, [len(g) for g in groups]


@pytest.fixture(scope="module", params=[("llama", "clip"), ("qwen2", "clip"), ("llama", "siglip")],
                ids=["llama-clip", "qwen2-clip", "llama-siglip"])
def pair(request, tiny):
    arch, encoder = request.param  # SigLIP has no CLS token: LlavaNext's "full" strategy
    model = tiny.vlm(arch, encoder, image_aspect_ratio="anyres", image_grid_pinpoints=PINS)
    with torch.no_grad():  # a non-trivial newline, so a misplaced one shows
        model.projector.image_newline.weight.normal_(0, 1, generator=torch.Generator().manual_seed(5))
    return model, to_llava_next(model)


@pytest.mark.parametrize("groups", [[["square"]], [["wide"]], [["tall"]], [["wide", "tall"], ["square"], ["tall"]]],
                         ids=["square", "wide", "tall", "mixed"])
def test_logits_match_llava_next(pair, groups) -> None:
    model, hf = pair
    ids, mask, pixels, sizes, counts = batch_of(model, groups)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, pixel_values=pixels, image_counts=counts, image_sizes=sizes).logits
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_sizes=torch.tensor(sizes)).logits
    valid = mask.bool()
    torch.testing.assert_close(theirs[valid], ours[valid], rtol=0, atol=1e-5)


def test_greedy_generations_are_identical(pair) -> None:
    model, hf = pair
    ids, mask, pixels, sizes, counts = batch_of(model, [["wide"], ["tall", "square"]])
    new = model.generate(ids, mask, pixel_values=pixels, image_counts=counts, image_sizes=sizes, max_new_tokens=6,
                         eos_token_id=[])
    out = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_sizes=torch.tensor(sizes),
                      max_new_tokens=6, do_sample=False, eos_token_id=None, min_new_tokens=6)
    assert out[:, ids.shape[1]:].tolist() == new.tolist()


def test_exported_processor_tiles_and_counts_like_ours(tiny, tmp_path: Path) -> None:
    model = tiny.vlm("llama", image_aspect_ratio="anyres", image_grid_pinpoints=PINS)
    export_hf(model, tmp_path / "hf")
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert hf.config.image_grid_pinpoints == model.image_processor.grid_pinpoints
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True,
    )
    for name, size in SHAPES.items():
        image = photo(size)
        batch = processor(text=text, images=image, return_tensors="pt")
        pixels, hw = model.image_processor.process(image)
        assert tuple(batch["image_sizes"][0].tolist()) == hw, name
        assert int((batch["input_ids"] == model.config.image_token_id).sum()) == geometry_of(model).num_tokens(hw), name
        torch.testing.assert_close(batch["pixel_values"][0][: pixels.shape[0]], pixels, rtol=0, atol=1e-5)


def test_import_then_export_round_trips_identical_tensors(tiny, tmp_path: Path) -> None:
    model = tiny.vlm("qwen2", image_aspect_ratio="anyres", image_grid_pinpoints=PINS)
    export_hf(model, tmp_path / "a")
    imported = import_hf(tmp_path / "a", tmp_path / "ours")
    assert imported.config.vision.anyres and imported.image_processor.grid_pinpoints == model.image_processor.grid_pinpoints
    assert torch.equal(imported.projector.image_newline.weight, model.projector.image_newline.weight)
    export_hf(imported, tmp_path / "b")
    first, second = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert first.keys() == second.keys() and any(k.endswith("image_newline") for k in first)
    assert all(torch.equal(first[k], second[k]) for k in first)
    ids, mask, pixels, sizes, counts = batch_of(model, [["tall"]])
    with torch.no_grad():
        torch.testing.assert_close(imported(ids, pixel_values=pixels, image_sizes=sizes).logits,
                                   model(ids, pixel_values=pixels, image_sizes=sizes).logits, rtol=0, atol=1e-6)


def test_a_tile_cap_cannot_be_exported(tiny, tmp_path: Path) -> None:
    model = tiny.vlm("llama", image_aspect_ratio="anyres", image_grid_pinpoints=PINS, anyres_max_tiles=2)
    with pytest.raises(ExportError, match="anyres_max_tiles"):
        export_hf(model, tmp_path / "hf")
