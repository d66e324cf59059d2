"""Stage-0 LLM: a short run lowers the held-out LM loss and saves a checkpoint AutoModelForCausalLM loads as-is."""
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthetic.stage0.llm import pretrain_llm, token_blocks


def test_token_blocks_are_the_corpus_stream(world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    blocks = token_blocks(world / "text_corpus.txt", tok, 32)
    assert blocks.shape[1] == 32 and blocks[0, 0].item() == tok.bos_token_id
    flat = blocks.flatten().tolist()
    assert flat.count(tok.bos_token_id) > 10 and flat.count(tok.eos_token_id) > 10  # documents delimited


def test_short_run_lowers_loss_and_reloads(world: Path, tmp_path: Path, tiny_llm) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "llm"
    metrics = pretrain_llm(world, out, tiny_llm, log_every=0)
    assert not metrics["cached"]
    assert metrics["final_val_loss"] < metrics["initial_val_loss"] - 1.0, metrics
    assert metrics["final_train_loss"] < metrics["first_train_loss"] - 1.0, metrics
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id
    ids = tok("There are two objects on a", return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert new.shape == (1, ids.shape[1] + 3)


def test_second_run_is_cached_and_config_change_retrains(world: Path, tmp_path: Path, tiny_llm) -> None:
    torch.set_num_threads(1)
    tiny_llm.steps = 3
    out = tmp_path / "llm"
    first = pretrain_llm(world, out, tiny_llm, log_every=0)
    again = pretrain_llm(world, out, tiny_llm, log_every=0)
    assert again["cached"] and again["final_val_loss"] == first["final_val_loss"]
    tiny_llm.steps = 4
    assert not pretrain_llm(world, out, tiny_llm, log_every=0)["cached"]
