"""Packed rows through the model: block-diagonal masks, restarted positions, same losses and gradients as unpacked."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlm.packing import (PackingUnsupportedError, block_diagonal_mask, packed_llm_kwargs, packed_position_ids,
                         segment_ids, use_varlen_attention)
from vlm.testing import pad_batch, sample_ids

IMAGES = [2, 0, 1, 0, 3]  # images per sample: multi-image, text-only and single-image samples packed together
ROWS = [[0, 1, 2], [3, 4]]  # samples per packed row


def test_block_diagonal_mask_is_causal_within_samples_and_pads_alone() -> None:
    mask = block_diagonal_mask([[2, 3]], 6)[0, 0].int()
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]])  # the padding tail is a segment of its own
    assert torch.equal(mask, expected)
    additive = block_diagonal_mask([[2, 3]], 6, dtype=torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected.bool())
    assert additive.min() == torch.finfo(torch.float32).min
    assert packed_position_ids([[2, 3], [5]], 6).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 0]]
    assert segment_ids([[2, 3]], 5).tolist() == [[0, 0, 1, 1, 1]]
    with pytest.raises(ValueError, match="row 0"):
        segment_ids([[4, 3]], 6)


def _samples(model):
    out = []
    for n, k in enumerate(IMAGES):
        ids = sample_ids(model, k, num_text=4 + 3 * n, seed=n)
        labels = ids.masked_fill(ids == model.config.image_token_id, -100)
        labels[: 1 + k] = -100  # a prompt part carries no label
        out.append((ids, labels))
    return out


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
                           reduction="sum")


def unpacked_loss(model, samples, pixels):
    ids, mask = pad_batch([s[0] for s in samples], model.config.pad_token_id, "right")
    labels = torch.full_like(ids, -100)
    for b, (_, lab) in enumerate(samples):
        labels[b, : len(lab)] = lab
    logits = model(ids, attention_mask=mask, pixel_values=pixels, image_counts=torch.tensor(IMAGES)).logits
    return _summed_loss(logits, labels)


def packed_inputs(model, samples, rows=ROWS):
    width = max(sum(len(samples[i][0]) for i in row) for row in rows) + 3  # with a padding tail
    ids = torch.full((len(rows), width), model.config.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for b, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(samples[i][0])
            ids[b, start:start + n] = samples[i][0]
            labels[b, start:start + n] = samples[i][1]
            labels[b, start] = -100
            start += n
    lengths = [[len(samples[i][0]) for i in row] for row in rows]
    counts = torch.tensor([sum(IMAGES[i] for i in row) for row in rows])
    return ids, labels, lengths, counts


def packed_loss(model, samples, pixels, **overrides):
    ids, labels, lengths, counts = packed_inputs(model, samples)
    kwargs = {"sample_lengths": lengths, **overrides}
    logits = model(ids, pixel_values=pixels, image_counts=counts, **kwargs).logits
    return _summed_loss(logits, labels)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def set_attention(model, attn: str) -> None:
    if attn == "sdpa_varlen":
        assert use_varlen_attention(model.llm)
    else:
        model.llm.set_attn_implementation(attn)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_varlen"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_equals_unpacked_losses_and_gradients(tiny, arch: str, attn: str) -> None:
    """sdpa / eager: a block-diagonal mask; sdpa_varlen: SDPA per sample from the varlen (flash) kwargs, which
    falls back to plain SDPA for the unpacked reference."""
    model = tiny.vlm(arch).float().eval()  # eval: no dropout, so both passes are deterministic
    set_attention(model, attn)
    samples = _samples(model)
    pixels = torch.randn(sum(IMAGES), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = unpacked_loss(model, samples, pixels)
    reference.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    loss = packed_loss(model, samples, pixels)
    loss.backward()
    got = _grads(model)
    assert set(got) == set(expected) and len(got) > 10
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_varlen_segments_spanning_samples_leak(tiny, arch: str, monkeypatch) -> None:
    """The varlen path is only as good as its cumulative lengths: whole rows as segments change the loss."""
    import vlm.packing

    model = tiny.vlm(arch).float().eval()
    set_attention(model, "sdpa_varlen")
    samples = _samples(model)
    pixels = torch.randn(sum(IMAGES), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = unpacked_loss(model, samples, pixels)
        torch.testing.assert_close(packed_loss(model, samples, pixels), reference, rtol=1e-5, atol=1e-5)
        real = vlm.packing.flash_kwargs
        monkeypatch.setattr(vlm.packing, "flash_kwargs",
                            lambda lengths, n, device: real([[n]] * len(lengths), n, device))
        leaking = packed_loss(model, samples, pixels)
    assert abs(float(leaking - reference)) > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_leaking_mask_or_unrestarted_positions_change_the_loss(tiny, arch: str) -> None:
    """The equality above can fail: plain causal attention across samples gives another loss, and so do positions
    counted over the whole row for GPT-2's absolute position embeddings (RoPE only sees relative positions inside
    an isolated sample, so for Llama the restart is equal up to rounding)."""
    model = tiny.vlm(arch).float().eval()
    samples = _samples(model)
    pixels = torch.randn(sum(IMAGES), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = unpacked_loss(model, samples, pixels)
        ids, labels, lengths, counts = packed_inputs(model, samples)
        leaking = _summed_loss(model(ids, attention_mask=(ids != -1).long(), pixel_values=pixels,
                                     image_counts=counts).logits, labels)
        width = ids.shape[1]
        whole_row = torch.arange(width).expand(len(lengths), width)
        unrestarted = packed_loss(model, samples, pixels, position_ids=whole_row)
    assert abs(float(leaking - reference)) > 1e-3
    if arch == "gpt2":
        assert abs(float(unrestarted - reference)) > 1e-3
    else:
        torch.testing.assert_close(unrestarted, reference, rtol=1e-5, atol=1e-4)


def test_flash_attention_is_refused_clearly_where_it_cannot_run(tiny, monkeypatch) -> None:
    model = tiny.vlm("llama")
    monkeypatch.setattr(model.llm.config, "_attn_implementation", "flash_attention_2", raising=False)
    monkeypatch.setattr("vlm.packing.flash_attention_available", lambda impl="flash_attention_2": False)
    with pytest.raises(PackingUnsupportedError, match="flash-attn"):
        packed_llm_kwargs(model.llm, [[3, 2]], 6, dtype=torch.float32, device=torch.device("cpu"))
    monkeypatch.setattr(model.llm.config, "_attn_implementation", "flex_attention", raising=False)
    with pytest.raises(PackingUnsupportedError, match="flex_attention"):
        packed_llm_kwargs(model.llm, [[3, 2]], 6, dtype=torch.float32, device=torch.device("cpu"))


def test_flash_kwargs_cut_the_flattened_rows_at_every_sample() -> None:
    from vlm.packing import flash_kwargs

    kw = flash_kwargs([[3, 2], [4]], 6, torch.device("cpu"))
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]  # row 0: 3, 2, pad 1; row 1: 4, pad 2
    assert kw["max_length_q"] == 4 and kw["cu_seq_lens_q"].dtype == torch.int32


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_varlen"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_packed_batch_through_the_training_loss(tiny, arch: str, attn: str) -> None:
    """The training path: `model.loss(batch)` (supervised-only LM head) on a packed Batch = on the same samples unpacked,
    values and gradients."""
    from vlm.batch import Batch

    model = tiny.vlm(arch).float().eval()
    set_attention(model, attn)
    samples = _samples(model)
    pixels = torch.randn(sum(IMAGES), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids, mask = pad_batch([s[0] for s in samples], model.config.pad_token_id, "right")
    labels = torch.full_like(ids, -100)
    for b, (_, lab) in enumerate(samples):
        labels[b, : len(lab)] = lab
    plain = Batch(ids, mask, labels=labels, image_counts=torch.tensor(IMAGES), pixel_values=pixels)
    p_ids, p_labels, lengths, counts = packed_inputs(model, samples)
    used = torch.tensor([sum(row) for row in lengths])
    p_mask = (torch.arange(p_ids.shape[1])[None] < used[:, None]).long()
    packed = Batch(p_ids, p_mask, labels=p_labels, image_counts=counts, pixel_values=pixels,
                   position_ids=packed_position_ids(lengths, p_ids.shape[1]), sample_lengths=lengths)
    reference = model.loss(plain)
    reference.loss.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    got_loss = model.loss(packed)
    got_loss.loss.backward()
    assert got_loss.tokens == reference.tokens
    torch.testing.assert_close(got_loss.loss, reference.loss, rtol=1e-5, atol=1e-5)
    got = _grads(model)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sdpa_varlen_gets_host_segment_sizes_and_no_dense_mask(tiny, arch: str, monkeypatch) -> None:
    """Packed rows on `sdpa_varlen`: every layer gets the segment sizes as Python ints (no device tensor to read back,
    which on a GPU is a host sync per layer) and no [B, 1, L, L] mask (transformers built one from the restarting
    position ids; the segments make it useless)."""
    from transformers import AttentionInterface

    import vlm.packing

    model = tiny.vlm(arch).float().eval()
    set_attention(model, "sdpa_varlen")
    seen: list[tuple[object, object, bool]] = []

    def spy(module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append((attention_mask, kwargs.get("segment_sizes"), "cu_seq_lens_q" in kwargs))
        return vlm.packing.sdpa_varlen_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(vlm.packing.SDPA_VARLEN, spy)
    try:
        samples = _samples(model)
        pixels = torch.randn(sum(IMAGES), 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            packed_loss(model, samples, pixels)
    finally:
        vlm.packing.register_sdpa_varlen()
    _, _, lengths, _ = packed_inputs(model, samples)
    width = max(sum(row) for row in lengths) + 3
    expected = tuple(n for segs in vlm.packing.segments(lengths, width) for n in segs)
    assert len(seen) == model.llm.config.num_hidden_layers
    for mask, sizes, has_cu in seen:
        assert mask is None and not has_cu
        assert sizes == expected and all(type(n) is int for n in sizes)


def test_sdpa_varlen_mask_keeps_padding_and_decoding_masks() -> None:
    from vlm.packing import sdpa_varlen_mask

    common = dict(batch_size=2, q_length=4, kv_length=4, device="cpu")
    assert sdpa_varlen_mask(**common, attention_mask=None) is None
    padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    mask = sdpa_varlen_mask(**common, attention_mask=padded)
    assert mask is not None and mask.shape == (2, 1, 4, 4) and not bool(mask[0, 0, 3, 3])


def test_flash_attention_3_looks_for_its_own_package(monkeypatch) -> None:
    import importlib.util

    import vlm.packing

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    found = {"flash_attn"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in found else None)
    assert vlm.packing.flash_attention_available("flash_attention_2")
    assert not vlm.packing.flash_attention_available("flash_attention_3")  # flash_attn_interface is missing
