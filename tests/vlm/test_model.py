"""Tests for VisionLanguageModel: build, token handling, splicing, counts, gradients, text-only paths."""
from __future__ import annotations

import pytest
import torch

from vision_encoders.config import VisionEncoderConfig
from vlm.model import VisionLanguageModel
from vlm.testing import pad_batch, sample_ids


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_build_records_tokens_and_sizes(tiny, arch: str) -> None:
    model = tiny.vlm(arch)
    c = model.config
    assert model.tokenizer.encode("<image>", add_special_tokens=False) == [c.image_token_id]
    assert model.tokenizer.pad_token_id == c.pad_token_id
    assert (c.vision_num_tokens, c.num_image_tokens) == (16, 16)
    rows = model.llm.get_input_embeddings().weight
    assert rows.shape[0] >= len(model.tokenizer)
    assert c.image_token_id in c.added_token_ids and c.pad_token_id in c.added_token_ids
    # new rows start at the mean of the old ones
    old = min(c.added_token_ids)
    torch.testing.assert_close(rows[c.image_token_id], rows[:old].mean(0))
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_forward_mixed_batch_matches_manual_splice(tiny, arch: str) -> None:
    model = tiny.vlm(arch)
    seqs = [sample_ids(model, 2, seed=1), sample_ids(model, 0, num_text=9, seed=2), sample_ids(model, 1, seed=3)]
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "right")
    labels = ids.masked_fill((ids == model.config.image_token_id) | (mask == 0), -100)
    pixels = torch.randn(3, 3, 32, 32)
    out = model(ids, attention_mask=mask, labels=labels, pixel_values=pixels, image_counts=torch.tensor([2, 0, 1]))
    assert out.logits.shape == (3, ids.shape[1], model.llm.get_output_embeddings().weight.shape[0])
    # manual splice: image i's K rows go to the i-th run of image tokens, in order of appearance
    with torch.no_grad():
        rows = model.encode_images(pixels)
        embeds = model.llm.get_input_embeddings()(ids.masked_fill(ids == model.config.image_token_id, 0)).clone()
        positions = (ids == model.config.image_token_id).nonzero().tolist()
        flat = rows.reshape(-1, rows.shape[-1])
        for n, (b, t) in enumerate(positions):
            embeds[b, t] = flat[n]
        expected = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=1e-6)


def test_vision_features_path_equals_pixels(tiny) -> None:
    model = tiny.vlm()
    ids = sample_ids(model, 1)[None]
    pixels = torch.randn(1, 3, 32, 32)
    features = model.vision_encoder(pixels)
    a = model(ids, pixel_values=pixels).logits
    b = model(ids, vision_features=features).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        model(ids, pixel_values=pixels, vision_features=features)
    with pytest.raises(ValueError, match=r"\[N, T=16, D\]"):
        model(ids, vision_features=features[:, :5])


def test_text_only_batch_skips_vision_tower(tiny) -> None:
    model = tiny.vlm()
    calls: list[int] = []
    model.vision_encoder.register_forward_hook(lambda *_: calls.append(1))
    ids = sample_ids(model, 0, num_text=7)[None]
    out = model(ids, labels=ids)
    assert calls == [] and torch.isfinite(out.loss)
    reference = model.llm(input_ids=ids, labels=ids)
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=0)
    model(sample_ids(model, 1)[None], pixel_values=torch.randn(1, 3, 32, 32))
    assert calls == [1]


def test_count_mismatch_names_the_sample(tiny) -> None:
    model = tiny.vlm()
    k = model.config.num_image_tokens
    good, short = sample_ids(model, 1, seed=1), sample_ids(model, 1, seed=2)[: 1 + k - 3]
    ids, mask = pad_batch([good, short], model.config.pad_token_id, "right")
    with pytest.raises(ValueError, match=rf"sample 1: {k - 3} image-token positions but 1 image\(s\) x K={k} = {k} expected"):
        model(ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 32, 32), image_counts=[1, 1])
    with pytest.raises(ValueError, match=rf"{2 * k - 3} image-token positions .* 2 image\(s\) x K={k}"):
        model(ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"samples \[0\] hold image tokens"):
        model(good[None])
    with pytest.raises(ValueError, match="image_counts sum to 2 but 3 images"):
        model(torch.stack([good, good]), pixel_values=torch.randn(3, 3, 32, 32), image_counts=[1, 1])


def test_frozen_encoder_runs_without_autograd_but_unfrozen_blocks_train(tiny) -> None:
    model = tiny.vlm()
    ids = sample_ids(model, 1)[None]
    pixels = torch.randn(1, 3, 32, 32)
    pixels.requires_grad_(True)
    rows = model.encode_images(pixels)
    assert rows.requires_grad  # the projector trains
    rows.sum().backward()
    assert pixels.grad is None  # no graph through the frozen encoder
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids.masked_fill(ids == model.config.image_token_id, -100), pixel_values=pixels).loss.backward()
    assert model.projector.linear_1.weight.grad is not None
    assert all(p.grad is None for p in model.vision_encoder.parameters())

    # select_layer=-1 so that the last block is on the path (with -2 it is not used at all)
    unfrozen = tiny.vlm(unfreeze_last_n=1, select_layer=-1)
    out = unfrozen(ids, labels=ids.masked_fill(ids == unfrozen.config.image_token_id, -100), pixel_values=pixels)
    out.loss.backward()
    last, first = unfrozen.vision_encoder.blocks()[-1], unfrozen.vision_encoder.blocks()[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in last.parameters())
    assert all(p.grad is None for p in first.parameters())


def test_half_precision_on_cpu_degrades_with_a_warning(tiny) -> None:
    if torch.cuda.is_available():
        pytest.skip("GPU present: bf16 is honoured there")
    with pytest.warns(UserWarning, match="needs a GPU.*float32"):
        model = VisionLanguageModel.build(VisionEncoderConfig(spec=tiny.vision("clip")), "mlp2x_gelu",
                                          tiny.llm("llama"), "vicuna_v1", torch_dtype="bfloat16")
    assert model.dtype == torch.float32


def test_cls_patch_with_pixel_shuffle_is_a_clear_error(tiny) -> None:
    with pytest.raises(ValueError, match="CLS"):
        tiny.vlm(projector="pixel_shuffle2x_mlp2x_gelu", select_feature="cls_patch")


def test_flash_attention_on_cpu_degrades_with_a_warning(tiny) -> None:
    if torch.cuda.is_available():
        pytest.skip("GPU present")
    with pytest.warns(UserWarning, match="needs a CUDA GPU; using 'sdpa'"):
        VisionLanguageModel.build(VisionEncoderConfig(spec=tiny.vision("clip")), "mlp2x_gelu", tiny.llm("llama"),
                                  "vicuna_v1", attn_implementation="flash_attention_2")


def test_train_mode_keeps_a_frozen_encoder_in_eval(tiny) -> None:
    model = tiny.vlm()
    assert not model.training  # build returns eval mode, as from_pretrained does
    model.train()
    assert model.llm.training and model.projector.training and not model.vision_encoder.training
    unfrozen = tiny.vlm(unfreeze_last_n=1).train()
    assert unfrozen.vision_encoder.training


def test_unknown_template_or_projector_fails_before_loading(tiny) -> None:
    vision = VisionEncoderConfig(spec="hf:/nonexistent/never-read")
    with pytest.raises(ValueError, match="unknown template 'vicuna'"):
        VisionLanguageModel.build(vision, "mlp2x_gelu", "/nonexistent/llm", "vicuna")
    with pytest.raises(ValueError, match="unknown projector 'mlp2x_gelu_foo'"):
        VisionLanguageModel.build(vision, "mlp2x_gelu_foo", "/nonexistent/llm", "vicuna_v1")
