"""Tests for adding <image>/pad tokens and giving them embedding rows."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlm.testing import make_tiny_llm
from vlm.tokens import add_special_tokens, resize_for_tokenizer, single_token_id


def test_adds_image_and_pad_once(tmp_path: Path) -> None:
    path = make_tiny_llm(tmp_path / "llm", "llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    before = len(tokenizer)
    added = add_special_tokens(tokenizer, "<image>")
    assert added == [before, before + 1]
    assert tokenizer.pad_token == "<pad>" and single_token_id(tokenizer, "<image>") == before
    assert tokenizer.encode("a<image>b", add_special_tokens=False).count(before) == 1
    assert add_special_tokens(tokenizer, "<image>") == []  # already there: nothing added


def test_resize_grows_never_shrinks_and_sets_mean_rows(tmp_path: Path) -> None:
    path = make_tiny_llm(tmp_path / "llm", "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    llm = AutoModelForCausalLM.from_pretrained(path)
    old = llm.get_input_embeddings().weight.detach().clone()
    ids = resize_for_tokenizer(llm, tokenizer, add_special_tokens(tokenizer, "<image>"))
    weight = llm.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) == old.shape[0] + 2 and ids == [old.shape[0], old.shape[0] + 1]
    torch.testing.assert_close(weight[: old.shape[0]], old, rtol=0, atol=0)
    torch.testing.assert_close(weight[ids[0]], old.mean(0))
    assert llm.get_output_embeddings().weight is weight  # GPT-2 stays tied

    bigger = AutoModelForCausalLM.from_pretrained(path)
    bigger.resize_token_embeddings(len(tokenizer) + 10, mean_resizing=False)
    rows = bigger.get_input_embeddings().weight.shape[0]
    assert resize_for_tokenizer(bigger, tokenizer, [ids[0]]) == [ids[0]]
    assert bigger.get_input_embeddings().weight.shape[0] == rows
