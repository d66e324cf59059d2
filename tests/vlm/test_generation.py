"""Tests for generation: left-padded batches equal one-by-one greedy, new tokens only, stop ids, streaming, sampling."""
from __future__ import annotations

import threading

import pytest
import torch
from transformers import TextIteratorStreamer

from vlm.testing import pad_batch, sample_ids


def _one_by_one(model, seqs, pixels, counts, n):
    outs, start = [], 0
    for seq, count in zip(seqs, counts):
        px = pixels[start:start + count] if count else None
        start += count
        outs.append(model.generate(seq[None], torch.ones_like(seq)[None], pixel_values=px, max_new_tokens=n,
                                   eos_token_id=[]))
    return outs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_left_padded_batch_equals_one_by_one(tiny, arch: str) -> None:
    model = tiny.vlm(arch)
    seqs = [sample_ids(model, 1, num_text=2, seed=4), sample_ids(model, 0, num_text=11, seed=5),
            sample_ids(model, 2, num_text=1, seed=6)]
    counts = [1, 0, 2]
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "left")
    batch = model.generate(ids, mask, pixel_values=pixels, image_counts=counts, max_new_tokens=6, eos_token_id=[])
    assert batch.shape == (3, 6)  # new tokens only
    singles = _one_by_one(model, seqs, pixels, counts, 6)
    for row, single in enumerate(singles):
        assert batch[row].tolist() == single[0].tolist(), f"row {row}"
    # the greedy continuation is the argmax of a plain forward pass
    first = model(seqs[0][None], pixel_values=pixels[:1]).logits[0, -1].argmax()
    assert batch[0, 0] == first


def test_right_padding_is_refused(tiny) -> None:
    model = tiny.vlm()
    ids, mask = pad_batch([sample_ids(model, 0, 3), sample_ids(model, 0, 6)], model.config.pad_token_id, "right")
    with pytest.raises(ValueError, match="LEFT-padded"):
        model.generate(ids, mask)


def test_stops_at_any_of_the_stop_ids(tiny) -> None:
    model = tiny.vlm()
    prompt = sample_ids(model, 1, seed=7)[None]
    pixels = torch.randn(1, 3, 32, 32)
    free = model.generate(prompt, pixel_values=pixels, max_new_tokens=8, eos_token_id=[])[0].tolist()
    stop = free[2]
    cut = model.generate(prompt, pixel_values=pixels, max_new_tokens=8, eos_token_id=[free[5], stop])[0].tolist()
    first_stop = next(i for i, t in enumerate(free) if t in (free[5], stop))
    assert cut == free[: first_stop + 1]


def test_streamer_yields_the_generated_text(tiny) -> None:
    model = tiny.vlm()
    prompt = sample_ids(model, 1, seed=8)[None]
    pixels = torch.randn(1, 3, 32, 32)
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, torch.Tensor] = {}
    worker = threading.Thread(target=lambda: result.update(out=model.generate(
        prompt, pixel_values=pixels, max_new_tokens=10, eos_token_id=[], streamer=streamer)))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == model.tokenizer.decode(result["out"][0], skip_special_tokens=True)
    assert streamed


def test_sampling_is_seeded_and_temperature_matters(tiny) -> None:
    model = tiny.vlm()
    prompt = sample_ids(model, 0, num_text=4, seed=9)[None]
    torch.manual_seed(1)
    a = model.generate(prompt, do_sample=True, temperature=1.5, top_p=0.95, max_new_tokens=12, eos_token_id=[])
    torch.manual_seed(1)
    b = model.generate(prompt, do_sample=True, temperature=1.5, top_p=0.95, max_new_tokens=12, eos_token_id=[])
    assert a.tolist() == b.tolist()
    greedy = model.generate(prompt, max_new_tokens=12, eos_token_id=[])
    torch.manual_seed(1)
    cold = model.generate(prompt, do_sample=True, temperature=1e-4, max_new_tokens=12, eos_token_id=[])
    assert cold.tolist() == greedy.tolist()
    assert a.tolist() != greedy.tolist()
