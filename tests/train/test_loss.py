"""Tests for the loop's loss (`train.step.summed_token_loss` on a collated Batch): equal to the full-logits loss
through the whole VLM (images, tied/untied, LoRA), and no [B, T, V] tensor anywhere in forward or backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conversation.tokenize import IGNORE_INDEX
from instruct_data.collate import collate
from instruct_data.item import Item
from train.config import LoraSettings
from train.lora import apply_lora
from train.step import summed_token_loss
from vlm.batch import Batch
from vlm.testing import sample_ids

CPU = torch.device("cpu")


def collated(model, seed: int = 0) -> Batch:  # noqa: ANN001
    """Three records (2, 0 and 1 images) through the collator; the last few tokens of each supervised."""
    items = []
    for index, images in enumerate([2, 0, 1]):
        ids = sample_ids(model, images, num_text=4 + 3 * index, seed=seed + index)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-3:] = ids[-3:]
        items.append(Item(f"r{index}", ids, labels, pixel_values=torch.randn(images, 3, 32, 32) if images else None,
                          image_keys=[f"r{index}/{i}.png" for i in range(images)]))
    return collate(items, model.config.pad_token_id)


def full_logits_loss(model, batch: Batch) -> torch.Tensor:  # noqa: ANN001
    """What the loop computed before: the model's [B, T, V] logits, shifted, fp32 CE summed."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
                   image_counts=batch.image_counts).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def loss_and_grads(model, fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # noqa: ANN001
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2_tied", "gpt2", "lora"])
def test_loop_loss_equals_full_logits_loss(tiny, arch: str) -> None:
    model = tiny.vlm("llama" if arch == "lora" else arch)
    if arch == "lora":
        apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    batch = collated(model)
    assert batch.supervised_tokens() == 9
    ours, grads = loss_and_grads(model, lambda: summed_token_loss(model, batch, CPU))
    expected, expected_grads = loss_and_grads(model, lambda: full_logits_loss(model, batch))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)
    assert grads.keys() == expected_grads.keys() and any(n.startswith("projector.") for n in grads)
    for name, grad in grads.items():
        scale = float(expected_grads[name].abs().max())
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-6 * scale, msg=name)
    # cached features stand in for the pixels
    features = model.vision_encoder(batch.pixel_values)
    torch.testing.assert_close(summed_token_loss(model, batch, CPU, vision_features=features).detach(), ours)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN201
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.numel = max(self.numel, leaf.numel())
        return out


def test_no_batch_by_length_by_vocab_tensor_in_a_step(tiny) -> None:
    """Vocabulary 151,936 (Qwen2), 8 x 256 tokens, 16 supervised: one fp32 [B, T, V] would be 1.2 GB."""
    model = tiny.vlm("llama")
    vocab = 151_936
    model.llm.resize_token_embeddings(vocab, mean_resizing=False)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (8, 256), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -2:] = ids[:, -2:]
    batch = Batch(ids, torch.ones_like(ids), labels)
    rows: list[int] = []
    model.llm.get_output_embeddings().register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    model.train()
    with LargestTensor() as largest:
        loss = summed_token_loss(model, batch, CPU)
        loss.backward()
    width = model.llm.get_input_embeddings().weight.shape[1]
    assert rows == [16, 16]  # the supervised rows only: forward, then recomputed in backward
    assert largest.numel == vocab * width  # the embedding's gradient: the head's logits (16 x V) are smaller
    assert largest.numel < 8 * 256 * vocab // 50
    assert model.llm.get_output_embeddings().weight.grad is not None and torch.isfinite(loss)
