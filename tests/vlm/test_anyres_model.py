"""anyres in the model: tiles encoded as one batch, packed per image, counts checked; image_newline saved and loaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlm.anyres_features import geometry_of, pack_image
from vlm.inputs import image_token_counter
from vlm.model import VisionLanguageModel
from vlm.testing import pad_batch

PINS = "(1x1),...,(3x3)"  # tiles of the tiny encoder's 32 px: grids up to 96 x 96


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture(scope="module")
def model(tiny) -> VisionLanguageModel:
    return tiny.vlm("llama", image_aspect_ratio="anyres", image_grid_pinpoints=PINS)


def prompt(model: VisionLanguageModel, counts: list[int], text: int = 3) -> torch.Tensor:
    image = model.config.image_token_id
    pieces = [torch.tensor([model.tokenizer.bos_token_id])]
    for k in counts:
        pieces += [torch.full((k,), image), torch.arange(5, 5 + text)]
    return torch.cat(pieces)


def inputs(model: VisionLanguageModel, images: list[Image.Image]):
    processed = [model.image_processor.process(img) for img in images]
    return torch.cat([p for p, _ in processed]), [s for _, s in processed]


def test_build_sets_up_tiling_and_a_newline_row(model) -> None:
    proc = model.image_processor
    assert proc.anyres and proc.output_size == 32 and proc.grid_pinpoints[-1] == [96, 96]
    newline = model.projector.image_newline.weight
    assert newline.shape == (model.llm.get_input_embeddings().weight.shape[1],)
    geo = geometry_of(model)
    assert geo.grid_side == 4 and geo.num_tokens((50, 100)) == image_token_counter(model)((50, 100))
    assert model.config.num_image_tokens == 16  # the base tile's K


def test_embed_places_each_images_packed_features(model) -> None:
    images = [photo(64, 64), photo(128, 64, 1), photo(32, 96, 2)]  # square, wide 2:1, tall 1:3
    pixels, sizes = inputs(model, images)
    geo = geometry_of(model)
    counts = [geo.num_tokens(s) for s in sizes]
    assert len(set(counts)) == 3
    ids, _ = pad_batch([prompt(model, counts[:2]), prompt(model, counts[2:])], model.config.pad_token_id, "right")
    with torch.no_grad():
        embeds = model.embed(ids, pixels, image_counts=[2, 1], image_sizes=sizes)
        projected = model.encode_images(pixels)
        tiles = [geo.num_tiles(s) for s in sizes]
        expected = [pack_image(chunk, s, geo, model.projector.image_newline.weight) for chunk, s in zip(projected.split(tiles), sizes)]
    first = embeds[0][ids[0] == model.config.image_token_id]
    torch.testing.assert_close(first, torch.cat(expected[:2]))
    torch.testing.assert_close(embeds[1][ids[1] == model.config.image_token_id], expected[2])
    # each row of the grid ends with the newline
    wide = expected[1]
    h, w = geo.capped_shape(geo.unpadded_shape(sizes[1]))
    rows = wide[16:].reshape(h, w + 1, -1)
    torch.testing.assert_close(rows[:, -1], model.projector.image_newline.weight.detach().expand(h, -1))


def test_a_count_mismatch_names_the_sample(model) -> None:
    pixels, sizes = inputs(model, [photo(64, 64), photo(128, 64)])
    geo = geometry_of(model)
    counts = [geo.num_tokens(s) for s in sizes]
    ids, _ = pad_batch([prompt(model, [counts[0]]), prompt(model, [counts[1] - 1])], model.config.pad_token_id, "right")
    with pytest.raises(ValueError, match="sample 1: .* positions but its 1 anyres image"):
        model.embed(ids, pixels, image_counts=[1, 1], image_sizes=sizes)
    with pytest.raises(ValueError, match="needs image_sizes"):
        model.embed(ids, pixels, image_counts=[1, 1])
    with pytest.raises(ValueError, match="tiles"):
        model.embed(ids, pixels[:-1], image_counts=[1, 1], image_sizes=sizes)


def test_loss_backpropagates_into_the_newline(model) -> None:
    pixels, sizes = inputs(model, [photo(128, 64)])
    ids = prompt(model, [geometry_of(model).num_tokens(sizes[0])])[None]
    model.projector.requires_grad_(True)
    try:
        out = model(ids, labels=ids, pixel_values=pixels, image_sizes=sizes)
        out.loss.backward()
        grad = model.projector.image_newline.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)


def test_generate_with_mixed_counts_left_padded(model) -> None:
    pixels, sizes = inputs(model, [photo(32, 96), photo(64, 64)])
    geo = geometry_of(model)
    seqs = [prompt(model, [geo.num_tokens(sizes[0])]), prompt(model, [geo.num_tokens(sizes[1])])]
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "left")
    batched = model.generate(ids, mask, pixel_values=pixels, image_counts=[1, 1], image_sizes=sizes, max_new_tokens=4)
    tiles = geo.num_tiles(sizes[0])
    alone = model.generate(seqs[1][None], pixel_values=pixels[tiles:], image_sizes=sizes[1:], max_new_tokens=4)
    assert batched[1].tolist() == alone[0].tolist()


def test_checkpoint_round_trip_keeps_newline_and_tiling(model, tmp_path) -> None:
    model.save(tmp_path / "ck")
    assert "image_newline.weight" in load_file(str(tmp_path / "ck" / "projector.safetensors"))
    back = VisionLanguageModel.load(tmp_path / "ck")
    assert torch.equal(back.projector.image_newline.weight, model.projector.image_newline.weight)
    assert back.image_processor == model.image_processor
    assert back.config.vision.image_grid_pinpoints == PINS and back.config.vision.anyres
    pixels, sizes = inputs(model, [photo(128, 64)])
    ids = prompt(model, [geometry_of(model).num_tokens(sizes[0])])[None]
    with torch.no_grad():
        torch.testing.assert_close(back(ids, pixel_values=pixels, image_sizes=sizes).logits,
                                   model(ids, pixel_values=pixels, image_sizes=sizes).logits)


def test_what_anyres_cannot_tile_is_refused(tiny) -> None:
    with pytest.raises(ValueError, match="CLS"):
        tiny.vlm("llama", image_aspect_ratio="anyres", image_grid_pinpoints=PINS, select_feature="cls_patch")
    with pytest.raises(ValueError, match="pixel_shuffle2x_mlp2x_gelu.*not supported"):
        tiny.vlm("llama", projector="pixel_shuffle2x_mlp2x_gelu", image_aspect_ratio="anyres", image_grid_pinpoints=PINS)


def test_packing_with_a_tile_cap_matches_llava_onevision() -> None:
    from types import SimpleNamespace

    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    from vision_encoders.anyres import AnyresGeometry

    geo = AnyresGeometry.build("(1x1),...,(3x3)", 32, 4, max_tiles=2)
    fake = SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(image_size=32, patch_size=8),
        image_grid_pinpoints=[list(p) for p in geo.pinpoints]))
    newline = torch.randn(6, generator=torch.Generator().manual_seed(1))
    for size in [(96, 96), (40, 100), (100, 33), (64, 64)]:
        tiles = torch.randn(geo.num_tiles(size), 16, 6, generator=torch.Generator().manual_seed(size[0]))
        ours = pack_image(tiles, size, geo, newline)
        theirs, lens = LlavaOnevisionModel.pack_image_features(fake, [tiles], torch.tensor([size]), newline,
                                                               vision_aspect_ratio="anyres_max_2")
        assert ours.shape[0] == geo.num_tokens(size) == int(lens[0]), size
        torch.testing.assert_close(ours, theirs[0], rtol=0, atol=1e-6)


def test_chat_counts_each_attached_image_from_its_size(model, tmp_path) -> None:
    from vlm.chat_session import ChatSession

    photo(128, 64).save(tmp_path / "wide.png")
    photo(32, 96, 1).save(tmp_path / "tall.png")
    chat = ChatSession(model, max_new_tokens=3)
    chat.add_image(tmp_path / "wide.png")
    answer, _ = chat.ask("what?")
    chat.add_image(tmp_path / "tall.png")
    ids, images, _ = chat.prepare("and this?")
    geo = geometry_of(model)
    assert ids.count(model.config.image_token_id) == geo.num_tokens((64, 128)) + geo.num_tokens((96, 32))
    assert sum(t.shape[0] for t in images) == geo.num_tiles((64, 128)) + geo.num_tiles((96, 32))
    chat.ask("and this?")  # runs: counts and tiles agree with the model


def test_eval_generator_batches_anyres_images_of_different_counts(model) -> None:
    from eval.generation import ModelGenerator
    from eval.items import EvalItem

    items = [EvalItem("a", photo(128, 64), "What?"), EvalItem("t", None, "Say hi."), EvalItem("b", photo(32, 96, 2), "Which?")]
    generator = ModelGenerator(model, max_new_tokens=3)
    batched = generator(items)
    assert batched == [generator([it])[0] for it in items]


@pytest.mark.parametrize("max_tiles", [None, 2])
def test_token_count_equals_features_produced_for_every_grid(max_tiles) -> None:
    from vision_encoders.anyres import AnyresGeometry

    geo = AnyresGeometry.build("(1x1),...,(3x3)", 32, 4, max_tiles=max_tiles)
    newline = torch.zeros(3)
    sizes = [p for p in geo.pinpoints] + [(h + 5, w - 7) for h, w in geo.pinpoints] + [(1, 20), (20, 1), (1, 1), (7, 300)]
    for size in sizes:
        tiles = torch.randn(geo.num_tiles(size), 16, 3)
        assert pack_image(tiles, size, geo, newline).shape == (geo.num_tokens(size), 3), size


def test_batch_loss_equals_the_summed_cross_entropy_of_the_logits(model) -> None:
    from torch.nn import functional as F

    from vlm.batch import Batch

    pixels, sizes = inputs(model, [photo(128, 64), photo(32, 96, 1), photo(64, 64, 2)])
    geo = geometry_of(model)
    counts = [geo.num_tokens(s) for s in sizes]
    ids, mask = pad_batch([prompt(model, counts[:1]), prompt(model, counts[1:])], model.config.pad_token_id, "right")
    labels = ids.masked_fill((ids == model.config.image_token_id) | (mask == 0), -100)
    batch = Batch(ids, mask, labels=labels, image_counts=torch.tensor([1, 2]), pixel_values=pixels, image_sizes=sizes)
    with torch.no_grad():
        loss = model.loss(batch).loss
        logits = model(ids, attention_mask=mask, pixel_values=pixels, image_counts=[1, 2], image_sizes=sizes).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
                               reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)


def test_a_count_mismatch_in_a_training_batch_names_the_records(model) -> None:
    from vlm.batch import Batch

    pixels, sizes = inputs(model, [photo(128, 64)])
    ids = prompt(model, [geometry_of(model).num_tokens(sizes[0]) + 1])[None]  # one image token too many
    batch = Batch(ids, torch.ones_like(ids), labels=ids, image_counts=torch.tensor([1]), pixel_values=pixels,
                  image_sizes=sizes, ids=["rec-7"])
    with pytest.raises(ValueError, match=r"sample 0: .*\['rec-7'\]"):
        model.loss(batch)
