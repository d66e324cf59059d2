"""Tests for the tiny-model helpers other packages' tests rely on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlm.testing import make_tiny_llm, make_tiny_vlm, pad_batch


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", False), ("gpt2", True)])
def test_make_tiny_llm_loads_through_from_pretrained(tmp_path: Path, arch: str, tied: bool) -> None:
    path = make_tiny_llm(tmp_path / arch, arch)  # type: ignore[arg-type]
    llm = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert llm.config.model_type == arch
    assert (llm.lm_head.weight is llm.get_input_embeddings().weight) == tied
    assert tokenizer.decode(tokenizer.encode("USER: What is in the image?", add_special_tokens=False)) == (
        "USER: What is in the image?"
    )
    assert tokenizer.eos_token == "</s>"


def test_make_tiny_vlm_other_parts(tmp_path: Path) -> None:
    model = make_tiny_vlm(tmp_path, arch="gpt2", encoder="siglip", projector="pixel_shuffle2x_mlp2x_gelu")
    assert model.config.num_image_tokens == 4 and model.config.vision_num_tokens == 16
    assert model.llm.config.model_type == "gpt2"


def test_pad_batch_sides() -> None:
    ids, mask = pad_batch([torch.tensor([5, 6]), torch.tensor([7])], 0, "left")
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_batch([torch.tensor([5, 6]), torch.tensor([7])], 0, "right")
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]
