"""Tests for vlm.lm_loss: the supervised-only loss equals the full-logits loss (values and gradients) for Llama,
Qwen2 and GPT-2, tied and untied, with LoRA, gradient checkpointing and chunking; logit transforms honoured or refused."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, GraniteConfig,
                          GraniteForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from conversation.tokenize import IGNORE_INDEX
from vlm.lm_loss import supervised_loss

VOCAB = 97


def tiny_llm(arch: str, tied: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, tie_word_embeddings=tied, initializer_range=0.2)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, **common)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**llama_like)).eval()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**llama_like)).eval()
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, **common)).eval()
    if arch == "gemma2":  # soft-capped logits
        return Gemma2ForCausalLM(Gemma2Config(head_dim=8, final_logit_softcapping=2.0, attn_implementation="eager",
                                              **llama_like)).eval()
    if arch == "granite":  # logits divided by logits_scaling
        return GraniteForCausalLM(GraniteConfig(logits_scaling=4.0, **llama_like)).eval()
    raise ValueError(arch)


def sample(llm: torch.nn.Module, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows of different lengths; labels on a few spans only (as in phase 1)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 6:12] = ids[0, 6:12]
    labels[1, 3:5] = ids[1, 3:5]
    labels[2, 4] = ids[2, 4]
    embeds = llm.get_input_embeddings()(ids)
    return embeds, mask, labels


def full_loss(llm: torch.nn.Module, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference: the model's own [B, T, V] logits, shifted, fp32 CE summed."""
    logits = llm(inputs_embeds=embeds, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def loss_and_grads(llm: torch.nn.Module, fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # noqa: ANN001
    llm.zero_grad(set_to_none=True)
    embeds, mask, labels = sample(llm)
    loss = fn(llm, embeds, mask, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in llm.named_parameters() if p.grad is not None}


def assert_same(llm: torch.nn.Module, chunk_rows: int = 2048) -> None:
    ours = lambda *a: supervised_loss(*a, chunk_rows=chunk_rows).loss  # noqa: E731
    loss, grads = loss_and_grads(llm, ours)
    expected, expected_grads = loss_and_grads(llm, full_loss)
    assert float(loss) > 0
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():  # fp32 rounding of differently ordered sums: 1e-6 of the largest entry
        scale = float(expected_grads[name].abs().max())
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("tied", [False, True])
def test_supervised_loss_equals_full_logits_loss(arch: str, tied: bool) -> None:
    llm = tiny_llm(arch, tied)
    assert (llm.get_output_embeddings().weight is llm.get_input_embeddings().weight) == tied
    assert_same(llm)


def test_chunks_give_the_same_loss_and_gradients() -> None:
    assert_same(tiny_llm("llama", tied=False), chunk_rows=2)  # 9 supervised rows: 5 chunks


def test_lora_on_the_layers_and_the_head() -> None:
    from peft import LoraConfig, get_peft_model

    llm = get_peft_model(tiny_llm("qwen2", tied=False),
                         LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"]))
    for name, param in llm.named_parameters():  # B starts at 0; nonzero so the adapters change the logits
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    assert_same(llm)


def test_gradient_checkpointing_in_training_mode() -> None:
    llm = tiny_llm("llama", tied=False)
    llm.gradient_checkpointing_enable()
    llm.train()  # HF checkpoints only in training mode; Llama has no dropout at these settings
    assert_same(llm)


@pytest.mark.parametrize("arch", ["gemma2", "granite"])
def test_logit_transforms_of_the_model_are_honoured(arch: str) -> None:
    assert_same(tiny_llm(arch, tied=False))


def test_an_unknown_logit_change_is_refused() -> None:
    class ScaledLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    llm = ScaledLlama(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  vocab_size=VOCAB)).eval()
    with pytest.raises(ValueError, match="ScaledLlama.*does not reproduce"):
        supervised_loss(llm, *sample(llm))
    plain = tiny_llm("llama", tied=False)
    plain.__class__ = type("RenamedLlama", (LlamaForCausalLM,), {})  # unknown class, same forward: checked, accepted
    assert_same(plain)


def test_no_supervised_position_gives_zero_with_a_graph_to_the_head() -> None:
    llm = tiny_llm("llama", tied=False)
    embeds, mask, labels = sample(llm)
    result = supervised_loss(llm, embeds, mask, torch.full_like(labels, IGNORE_INDEX))
    assert result.tokens == 0 and float(result.loss.detach()) == 0.0
    result.loss.backward()  # the head ran on no rows: it still gets a (zero) gradient, as every rank needs
    assert llm.get_output_embeddings().weight.grad is not None
    assert float(llm.get_output_embeddings().weight.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("chunk_rows", [2048, 2])
def test_per_row_sums_are_each_rows_reply_log_probability(chunk_rows: int) -> None:
    """The preference losses' sequence log-probabilities: per row, minus the sum of log-softmax at the supervised
    targets of the model's own full logits; chunks split rows (2 rows a chunk: 9 rows over 5 chunks) and still
    add up per row; the per-row sums add up to the loss, and their gradients are the full path's."""
    llm = tiny_llm("llama", tied=False)
    embeds, mask, labels = sample(llm)
    out = supervised_loss(llm, embeds, mask, labels, chunk_rows=chunk_rows, per_row=True)
    logits = llm(inputs_embeds=embeds, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != IGNORE_INDEX)
    expected = -picked.sum(dim=1)
    assert out.per_row is not None and out.per_row.shape == (3,)
    torch.testing.assert_close(out.per_row, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.per_row.sum(), out.loss, rtol=1e-6, atol=0)
    weights = torch.tensor([1.0, -2.0, 0.5])  # a DPO-like signed combination of rows
    (grad_ours,) = torch.autograd.grad((out.per_row * weights).sum(), llm.lm_head.weight)
    (grad_full,) = torch.autograd.grad((expected * weights).sum(), llm.lm_head.weight)
    torch.testing.assert_close(grad_ours, grad_full, rtol=1e-5, atol=1e-6)
    assert supervised_loss(llm, embeds, mask, labels).per_row is None  # the training loss path is unchanged
