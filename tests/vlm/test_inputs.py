"""The one input path (`vlm.inputs`): pixels with the size check always on, the image-token counter, prompt -> Batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conversation.errors import ImageLoadError
from conversation.records import Message
from conversation.tokenize import encode_prompt
from vision_encoders.preprocess import ImageProcessor
from vlm.anyres_features import geometry_of
from vlm.batch import Batch
from vlm.inputs import (
    ImageTokenCounter,
    checkpoint_token_counter,
    image_token_counter,
    left_pad,
    load_pixels,
    prompt_batch,
    prompt_ids,
)

PAD = ImageProcessor(size=16, mean=(0.5,) * 3, std=(0.5,) * 3, aspect_ratio="pad")


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture(scope="module")
def pad_model(tiny):
    return tiny.vlm("llama")


@pytest.fixture(scope="module")
def anyres_model(tiny):
    return tiny.vlm("llama", image_aspect_ratio="anyres", image_grid_pinpoints="(1x1),...,(3x3)")


# ---------------------------------------------------------------------------- pixels
def test_load_pixels_is_the_processors_output_with_the_decoded_size(tmp_path: Path) -> None:
    photo(20, 10).save(tmp_path / "a.png")
    pixels = load_pixels(tmp_path / "a.png", PAD)
    assert pixels.size == (10, 20) and pixels.values.shape == (1, 3, 16, 16)
    assert torch.equal(pixels.values[0], PAD(Image.open(tmp_path / "a.png")))
    assert torch.equal(load_pixels(photo(20, 10), PAD).values, pixels.values)  # a decoded image: the same


def test_an_extreme_aspect_image_is_an_image_load_error_not_a_value_error(tmp_path: Path) -> None:
    Image.new("L", (10_000, 1)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match="pad-to-square canvas"):  # the processor alone: its last guard
        PAD(Image.open(tmp_path / "wide.png"))
    with pytest.raises(ImageLoadError, match="extreme aspect ratio") as err:
        load_pixels(tmp_path / "wide.png", PAD)
    assert err.value.path.endswith("wide.png")
    with pytest.raises(ImageLoadError, match="extreme aspect ratio"):
        load_pixels(Image.new("L", (10_000, 1)), PAD)


def test_an_image_too_large_once_resized_is_an_image_load_error(tmp_path: Path) -> None:
    crop = ImageProcessor(size=16, mean=(0.5,) * 3, std=(0.5,) * 3, aspect_ratio="crop")
    Image.new("L", (400_000, 1)).save(tmp_path / "long.png")  # 16 x 6.4M pixels once the short side is 16
    with pytest.raises(ImageLoadError, match="shortest side of 16"):
        load_pixels(tmp_path / "long.png", crop)


def test_zero3_prefill_records_an_extreme_image_as_bad_instead_of_crashing(tmp_path: Path) -> None:
    from instruct_data.item import Item
    from train.feature_cache import FeatureCache
    from train.feature_prefill import prefill_features

    photo(12, 8).save(tmp_path / "ok.png")
    Image.new("L", (10_000, 1)).save(tmp_path / "wide.png")
    keys = [str(tmp_path / "ok.png"), str(tmp_path / "wide.png")]
    token = torch.zeros(1, dtype=torch.long)
    dataset = [Item("ok", token, token, image_keys=keys[:1]), Item("wide", token, token, image_keys=keys[1:])]

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return pixels.flatten(2)[:, :, :4].transpose(1, 2) * self.scale  # [N, T=4, D=3]

    cache = FeatureCache(tmp_path / "cache", "ab12")
    report = prefill_features(cache, dataset, iter([[0, 1]]), Encoder(), PAD)
    assert report.encoded == 1 and list(report.bad) == keys[1:] and "extreme aspect ratio" in report.bad[keys[1]]
    assert cache.missing(keys) == keys[1:]


# ---------------------------------------------------------------------------- the counter
def test_the_counter_is_a_callable_constant_k_without_anyres(pad_model, tmp_path: Path) -> None:
    count = image_token_counter(pad_model)
    k = pad_model.config.num_image_tokens
    assert isinstance(count, ImageTokenCounter) and callable(count) and not count.needs_size
    assert count((10, 500)) == count((300, 20)) == count() == k and count.for_images(None) == k
    pad_model.save(tmp_path / "ckpt")
    assert checkpoint_token_counter(tmp_path / "ckpt", pad_model.config) == count


def test_the_counter_counts_per_size_with_anyres(anyres_model, tmp_path: Path) -> None:
    count = image_token_counter(anyres_model)
    geo = geometry_of(anyres_model)
    assert count.needs_size and count((64, 128)) == geo.num_tokens((64, 128)) != count((96, 32))
    assert count.for_images([(64, 128), (96, 32)]) == [geo.num_tokens((64, 128)), geo.num_tokens((96, 32))]
    with pytest.raises(ValueError, match="from the image's size"):
        count()
    anyres_model.save(tmp_path / "ckpt")
    saved = checkpoint_token_counter(tmp_path / "ckpt", anyres_model.config)
    assert [saved(s) for s in [(64, 128), (96, 32), (5, 90)]] == [count(s) for s in [(64, 128), (96, 32), (5, 90)]]


def test_a_counter_from_k_or_a_function() -> None:
    assert ImageTokenCounter.of(7)((1, 2)) == 7 and ImageTokenCounter.of(7).for_images(None) == 7
    per_size = ImageTokenCounter.of(lambda size: size[0] + size[1])
    assert per_size.needs_size and per_size((2, 3)) == 5 and ImageTokenCounter.of(per_size) is per_size


# ---------------------------------------------------------------------------- prompt -> Batch
def _equal(a: Batch, b: Batch) -> None:
    for name in ("input_ids", "attention_mask", "image_counts", "pixel_values"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    assert a.image_sizes == b.image_sizes


def test_eval_prompts_give_the_batch_eval_built_before(pad_model) -> None:
    """The Batch `eval.generation.ModelGenerator` assembled by itself before (K as an int, pixels stacked)."""
    from eval.generation import ModelGenerator
    from eval.items import EvalItem

    cfg, proc = pad_model.config, pad_model.image_processor
    items = [EvalItem("a", photo(20, 12), "What colour?"), EvalItem("t", None, "Say hi."),
             EvalItem("b", photo(9, 30, 1), "Which shape is it?")]
    rows, pixels = [], []
    for item in items:
        content = (cfg.image_token + "\n" if item.image is not None else "") + item.prompt
        rows.append(encode_prompt([Message(role="user", content=content)], cfg.template, pad_model.tokenizer,
                                  image_token_id=cfg.image_token_id, num_image_tokens=cfg.num_image_tokens))
        if item.image is not None:
            pixels.append(proc(item.image))
    ids, mask = left_pad(rows, cfg.pad_token_id)
    before = Batch(ids, mask, image_counts=torch.tensor([1, 0, 1]), pixel_values=torch.stack(pixels).to(pad_model.dtype))
    generator = ModelGenerator(pad_model)
    images = [generator.processed(item) for item in items]
    now = prompt_batch(pad_model, [generator.encode(it, im) for it, im in zip(items, images)],
                       [[im] if im is not None else [] for im in images])
    _equal(now, before)


def test_chat_prompts_give_the_batch_chat_built_before(pad_model, tmp_path: Path) -> None:
    """The Batch `vlm.chat_session.ChatSession` assembled by itself before (a hard-coded "<image>\\n")."""
    from vlm.chat_session import ChatSession

    photo(20, 12).save(tmp_path / "a.png")
    photo(12, 20, 1).save(tmp_path / "b.png")
    cfg, proc = pad_model.config, pad_model.image_processor
    messages = [Message(role="user", content="<image>\n<image>\nCompare them.")]
    ids = torch.tensor([encode_prompt(messages, cfg.template, pad_model.tokenizer, image_token_id=cfg.image_token_id,
                                      num_image_tokens=cfg.num_image_tokens)])
    pixels = torch.stack([proc(Image.open(tmp_path / name)) for name in ("a.png", "b.png")])
    before = Batch(ids, torch.ones_like(ids), image_counts=torch.tensor([2]), pixel_values=pixels)
    chat = ChatSession(pad_model)
    chat.add_image(tmp_path / "a.png")
    chat.add_image(tmp_path / "b.png")
    row, images, _ = chat._fit("Compare them.")
    _equal(prompt_batch(pad_model, [row], [images]), before)


def test_anyres_prompts_carry_tiles_and_sizes(anyres_model) -> None:
    images = [load_pixels(photo(128, 64), anyres_model.image_processor),
              load_pixels(photo(32, 96, 1), anyres_model.image_processor)]
    geo = geometry_of(anyres_model)
    message = Message(role="user", content=anyres_model.config.image_token + "\nWhat?")
    rows = [prompt_ids(anyres_model, [message], [image.size]) for image in images]
    batch = prompt_batch(anyres_model, rows, [[image] for image in images])
    assert batch.image_sizes == [(64, 128), (96, 32)] and batch.image_counts.tolist() == [1, 1]
    assert batch.pixel_values.shape[0] == geo.num_tiles((64, 128)) + geo.num_tiles((96, 32))
    tokens = (batch.input_ids == anyres_model.config.image_token_id).sum(dim=1).tolist()
    assert tokens == [geo.num_tokens((64, 128)), geo.num_tokens((96, 32))]
    with torch.no_grad():
        anyres_model.generate(batch, max_new_tokens=2)  # counts and tiles agree with the model
