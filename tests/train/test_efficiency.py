"""FLOP accounting checked against counts worked out by hand, the GPU peak table and the padding ratio."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from train.efficiency import (StepFlops, Transformer, gpu_peak_tflops, llm_counts,
                              measured_peak_flops, padding_ratio, peak_flops)
from vlm.batch import Batch

# Llama, hidden 32, MLP 64, 2 layers, 4 heads of 8, 2 KV heads, vocab 100:
# per layer q 32*32 + k 32*16 + v 32*16 + o 32*32 = 3072, MLP 3*32*64 = 6144, 2 norms 64 -> 9280;
# 2 layers 18560 + final norm 32 + untied head 100*32 = 21792 (the input embedding is a lookup).
LLAMA_PER_TOKEN = 21792


def _llama(tied: bool = False) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


def test_llm_counts_by_hand() -> None:
    llm = _llama()
    counts = llm_counts(llm)
    assert (counts.trainable, counts.frozen, counts.layers, counts.width) == (LLAMA_PER_TOKEN, 0, 2, 32)
    # tied: the shared matrix counts once, as the head
    assert llm_counts(_llama(tied=True)).trainable == LLAMA_PER_TOKEN
    llm.requires_grad_(False)
    llm.lm_head.requires_grad_(True)
    counts = llm_counts(llm)
    assert (counts.trainable, counts.frozen) == (3200, LLAMA_PER_TOKEN - 3200)


def test_gpt2_counts_by_hand() -> None:
    # GPT-2, n_embd 16, 1 layer, vocab 50, 8 positions, tied: per layer 2 layer norms 2*32 = 64, c_attn
    # 16*48+48 = 816, attention c_proj 16*16+16 = 272, MLP c_fc 16*64+64 = 1088, c_proj 64*16+16 = 1040 -> 3280;
    # final ln 32; head (tied) 50*16 = 800; wpe 8*16 = 128
    # (positions are a lookup too, but stay in the count: only the token embedding is left out)
    llm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=8,
                                      bos_token_id=0, eos_token_id=0))
    counts = llm_counts(llm)
    assert counts.trainable == 3280 + 32 + 800 + 128 and (counts.layers, counts.width) == (1, 16)


def test_sequence_flops_by_hand() -> None:
    frozen = Transformer(trainable=0, frozen=1000, layers=2, width=8)
    assert frozen.sequence_flops(10) == 10 * 2000 + 4 * 2 * 100 * 8
    trains = Transformer(trainable=10, frozen=1000, layers=2, width=8)
    assert trains.sequence_flops(10) == 10 * (60 + 2000) + 3 * 4 * 2 * 100 * 8


def test_step_flops_on_a_vlm(tiny) -> None:
    model = tiny.vlm()
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    flops = StepFlops(model)
    llm, vision = flops.llm, flops.vision
    assert llm.trainable == 0 and vision.trainable == 0
    assert flops.projector.trainable == sum(p.numel() for p in model.projector.parameters())
    k = model.config.num_image_tokens
    ids = torch.ones(2, k + 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # row 1: k + 2 real tokens
    batch = Batch(ids, mask, image_counts=torch.tensor([1, 1]))
    text = llm.sequence_flops(k + 5) + llm.sequence_flops(k + 2)
    per_image = model.config.vision_num_tokens * 6 * flops.projector.trainable
    assert flops.batch_flops(batch, encoder_runs=False) == text + 2 * per_image
    tower = flops.vision.sequence_flops(flops.vision_tokens)
    assert tower > 0 and flops.batch_flops(batch, encoder_runs=True) == text + 2 * (per_image + tower)
    labels = torch.full_like(ids, -100)
    labels[:, k + 1:k + 3] = 7  # 2 supervised positions a row (shifted: positions k+1, k+2 are targets)
    head = flops.head.token_flops()
    assert head == 2 * model.llm.get_output_embeddings().weight.numel()  # frozen: forward only
    assert flops.batch_flops(dataclasses.replace(batch, labels=labels), encoder_runs=False) == \
        text + 2 * per_image - (2 * k + 7 - 4) * head  # the head on the 4 supervised positions only
    packed = dataclasses.replace(batch, sample_lengths=[[k + 2, 3], [k + 2]])  # attention per packed sample
    assert flops.batch_flops(packed, False) == (llm.sequence_flops(k + 2) * 2 + llm.sequence_flops(3)
                                                 + 2 * per_image)


def test_gpu_peak_table() -> None:
    assert gpu_peak_tflops("NVIDIA H200", "bf16", tf32=False) == 989.0
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16", tf32=False) == 989.0
    assert gpu_peak_tflops("NVIDIA H100 PCIe", "bf16", tf32=False) == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", tf32=True) == 156.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", tf32=False) == 19.5
    assert gpu_peak_tflops("NVIDIA A10", "bf16", tf32=False) == 125.0  # not the A100's
    assert gpu_peak_tflops("NVIDIA GeForce RTX 4090", "bf16", tf32=False) == 165.2
    assert gpu_peak_tflops("NVIDIA L40S", "bf16", tf32=False) == 362.1
    assert gpu_peak_tflops("Some Future GPU", "bf16", tf32=False) is None


def test_cpu_peak_is_measured_once() -> None:
    first = measured_peak_flops("cpu")
    assert first > 1e8 and measured_peak_flops("cpu") == first  # cached per process
    value, source = peak_flops(torch.device("cpu"), "fp32")
    assert value == first and "measured" in source


def test_padding_ratio() -> None:
    a = Batch(torch.zeros(2, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    b = Batch(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[1, 0, 0, 0]]))
    assert padding_ratio([a, b]) == pytest.approx(4 / 12) and padding_ratio([]) == 0.0


def test_a_module_that_is_not_a_vlm_logs_no_mfu() -> None:
    from train.efficiency import EfficiencyLog

    log = EfficiencyLog(nn.Linear(2, 2), torch.device("cpu"), "fp32")
    out = log.step_metrics([Batch(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))], [False], 0.1)
    assert out == {"padding_ratio": 0.0}


def test_a_4bit_weight_counts_its_unpacked_elements() -> None:
    """QLoRA: bitsandbytes packs two 4-bit values a byte; MFU counts the weight's real elements, not the bytes."""
    from types import SimpleNamespace

    from train.efficiency import _numel

    packed = torch.nn.Parameter(torch.zeros(32, 1, dtype=torch.uint8), requires_grad=False)  # 64 values packed
    packed.quant_state = SimpleNamespace(shape=torch.Size([8, 8]))
    partitioned = torch.nn.Parameter(torch.empty(0))
    partitioned.ds_numel = 12
    assert (_numel(packed), _numel(partitioned), _numel(torch.nn.Parameter(torch.ones(3)))) == (64, 12, 3)


def test_the_summary_gives_the_ranks_mean_imbalance() -> None:
    from train.efficiency import EfficiencyLog

    log = EfficiencyLog(nn.Linear(2, 2), torch.device("cpu"), "fp32")
    for tokens, tiles in ((1.5, 2.0), (1.1, 1.0)):
        log.record({"step_time_s": 1.0, "tokens": 10.0, "padding_ratio": 0.0, "token_imbalance": tokens,
                    "tile_imbalance": tiles})
    assert "ranks' max/mean load 1.30 in LLM tokens, 1.50 in image tiles" in log.summary()
    single = EfficiencyLog(nn.Linear(2, 2), torch.device("cpu"), "fp32")
    single.record({"step_time_s": 1.0, "tokens": 10.0, "padding_ratio": 0.0})
    assert "max/mean" not in single.summary()
