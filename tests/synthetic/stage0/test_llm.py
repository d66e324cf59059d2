"""Stage-0 LLM: a short run lowers the held-out LM loss and saves a checkpoint AutoModelForCausalLM loads as-is."""
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conversation.tokenize import IGNORE_INDEX
from synthetic.corpus import CORPUS_FILE, read_corpus
from synthetic.stage0.llm import pretrain_llm, token_blocks


def test_token_blocks_are_the_corpus_records_tokenized_as_the_vlm_does(world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    ids, labels = token_blocks(world / CORPUS_FILE, tok, 32)
    assert ids.shape == labels.shape and ids.shape[1] == 32 and ids[0, 0].item() == tok.bos_token_id
    flat, targets = ids.flatten().tolist(), labels.flatten().tolist()
    assert flat.count(tok.bos_token_id) > 10 and flat.count(tok.eos_token_id) > 10  # records delimited
    supervised = [t for t in targets if t != IGNORE_INDEX]
    assert 0.03 < len(supervised) / len(targets) < 0.5  # replies and captions, not prompts and sheets
    assert all(t == i for t, i in zip(targets, flat) if t != IGNORE_INDEX)
    # Every eos of a vicuna reply is supervised; the system prompt and the sheets never are.
    first = read_corpus(world / CORPUS_FILE)[0]
    record, sheet = first["conversations"], first["sheet"]
    sheet_ids = tok(sheet, add_special_tokens=False)["input_ids"]
    assert flat[1: 1 + len(sheet_ids)] == sheet_ids and all(t == IGNORE_INDEX for t in targets[: 1 + len(sheet_ids)])
    caption = tok(record[1]["value"] + "\n", add_special_tokens=False)["input_ids"]
    assert targets[1 + len(sheet_ids): 1 + len(sheet_ids) + len(caption)] == caption
    plain_ids, plain_labels = token_blocks(world / CORPUS_FILE, tok, 32, replies_only=False)
    assert torch.equal(plain_ids, ids) and torch.equal(plain_labels, ids)


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
    assert ids.shape[1] < new.shape[1] <= ids.shape[1] + 3  # it may end the reply with </s> early


def test_second_run_is_cached_and_config_change_retrains(world: Path, tmp_path: Path, tiny_llm) -> None:
    torch.set_num_threads(1)
    tiny_llm.steps = 3
    out = tmp_path / "llm"
    first = pretrain_llm(world, out, tiny_llm, log_every=0)
    again = pretrain_llm(world, out, tiny_llm, log_every=0)
    assert again["cached"] and again["final_val_loss"] == first["final_val_loss"]
    tiny_llm.steps = 4
    assert not pretrain_llm(world, out, tiny_llm, log_every=0)["cached"]
