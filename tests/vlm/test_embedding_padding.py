"""Embedding rows rounded up to a multiple of 64: token ids kept, padding rows never generated, old checkpoints load."""
from __future__ import annotations

import torch

from vlm.model import VisionLanguageModel
from vlm.testing import pad_batch, sample_ids
from vlm.tokens import embedding_rows, unused_rows


def test_build_pads_rows_and_keeps_ids(tiny) -> None:
    model = tiny.vlm("qwen2_tied")
    rows = embedding_rows(model.llm)
    assert rows % 64 == 0 and rows >= len(model.tokenizer) > rows - 64
    assert model.config.image_token_id < len(model.tokenizer) and model.config.pad_token_id < len(model.tokenizer)
    assert model.config.added_token_ids == sorted(model.config.added_token_ids)
    assert all(i < len(model.tokenizer) for i in model.config.added_token_ids)
    weight = model.llm.get_input_embeddings().weight
    padding = unused_rows(model.llm, model.tokenizer)
    assert padding == list(range(len(model.tokenizer), rows))
    # padding rows hold the mean row like the added tokens (deterministic, so reloads agree)
    torch.testing.assert_close(weight[padding[-1]], weight[model.config.added_token_ids[0]])
    assert model.llm.generation_config.suppress_tokens == padding


def test_generation_never_emits_padding_rows(tiny) -> None:
    model = tiny.vlm("llama")
    padding = unused_rows(model.llm, model.tokenizer)
    assert padding
    with torch.no_grad():  # make the padding rows win every argmax
        model.llm.get_output_embeddings().weight[padding] = 50 * model.llm.get_output_embeddings().weight[:1].sign()
    seqs = [sample_ids(model, 1, num_text=5, seed=i) for i in range(2)]
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "left")
    pixels = torch.randn(2, 3, model.vision_encoder.image_size, model.vision_encoder.image_size)
    suppressed = model.llm.generation_config.suppress_tokens
    model.llm.generation_config.suppress_tokens = None  # the control: without it a padding row wins
    assert int(model.generate(ids, mask, pixel_values=pixels, max_new_tokens=4).max()) >= len(model.tokenizer)
    model.llm.generation_config.suppress_tokens = suppressed
    out = model.generate(ids, mask, pixel_values=pixels, max_new_tokens=4)
    assert int(out.max()) < len(model.tokenizer)


def test_unpadded_old_checkpoints_load(tiny, tmp_path) -> None:
    model = tiny.vlm("llama")
    model.llm.resize_token_embeddings(len(model.tokenizer))  # as saved before padding existed
    model.save(tmp_path / "full")
    loaded = VisionLanguageModel.load(tmp_path / "full")
    assert embedding_rows(loaded.llm) == len(loaded.tokenizer) and not loaded.llm.generation_config.suppress_tokens
    # projector-only: the base LLM is re-padded on load, the added rows restored, padding rows the mean row
    model.config.llm = tiny.llm("llama")
    model.save(tmp_path / "proj", projector_only=True)
    a, b = VisionLanguageModel.load(tmp_path / "proj"), VisionLanguageModel.load(tmp_path / "proj")
    assert embedding_rows(a.llm) % 64 == 0
    torch.testing.assert_close(a.llm.get_input_embeddings().weight, b.llm.get_input_embeddings().weight)
    ids = model.config.added_token_ids
    torch.testing.assert_close(a.llm.get_input_embeddings().weight[ids], model.llm.get_input_embeddings().weight[ids])


def test_hf_export_suppresses_padding_rows(tiny) -> None:
    from vlm.hf.llava import to_llava

    model = tiny.vlm("llama")
    llava = to_llava(model)
    assert llava.generation_config.suppress_tokens == unused_rows(model.llm, model.tokenizer)
