"""Stage-0 LLM: a short run lowers the held-out LM loss and saves a checkpoint AutoModelForCausalLM loads as-is."""
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conversation.tokenize import IGNORE_INDEX
from synthetic.corpus import CORPUS_FILE, LESSONS, lesson, read_corpus
from synthetic.sheet import NO_CELL, SheetRecord
from synthetic.stage0.llm import collate, length_batches, lesson_records, pretrain_llm, tokenize_corpus, warmup_pools


def test_corpus_records_are_supervised_on_replies_with_cells_at_the_image_positions(stage0_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(stage0_world / "tokenizer"))
    records = tokenize_corpus(read_corpus(stage0_world / CORPUS_FILE), tok)
    entries = read_corpus(stage0_world / CORPUS_FILE)
    assert len(records) == len(entries)
    image_id = tok.convert_tokens_to_ids("<image>")
    first = records[0]  # a plain-template caption: bos, the nine cells, the caption
    assert first.input_ids[0] == tok.bos_token_id and first.input_ids[1:10] == [image_id] * 9
    assert all(c != [NO_CELL] * 5 for c in first.cell_ids[1:10]) and first.cell_ids[0] == [NO_CELL] * 5
    caption = tok(entries[0]["conversations"][1]["value"] + "\n", add_special_tokens=False)["input_ids"]
    assert first.labels[:10] == [IGNORE_INDEX] * 10 and first.labels[10: 10 + len(caption)] == caption
    labels = [t for r in records for t in r.labels]
    assert 0.03 < sum(t != IGNORE_INDEX for t in labels) / len(labels) < 0.6  # replies and captions, not prompts
    assert all(t == i for r in records for t, i in zip(r.labels, r.input_ids) if t != IGNORE_INDEX)
    text_only = [r for r, e in zip(records, entries) if "sheet" not in e]
    assert text_only and all(image_id not in r.input_ids and {c[0] for c in r.cell_ids} == {NO_CELL} for r in text_only)
    plain = tokenize_corpus(read_corpus(stage0_world / CORPUS_FILE), tok, replies_only=False)
    assert all(p.labels == p.input_ids for p in plain)


def test_length_batches_fit_the_token_budget_and_cover_every_record_once() -> None:
    lengths = [5, 30, 7, 12, 30, 3, 9, 64]
    batches = length_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 64 for b in batches)
    assert batches[0] == [5, 0, 2, 6, 3]  # shortest first: 5 rows padded to 12 = 60 tokens


def test_windowed_length_batches_mix_the_corpus_and_still_fit_the_budget() -> None:
    lengths = [4] * 40 + [30] * 200  # 40 short records (text-only chats) among long ones
    batches = length_batches(lengths, 128, window=24, generator=torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 128 for b in batches)
    with_short = sum(any(i < 40 for i in b) for b in batches)
    assert with_short >= 8  # a global sort puts all 40 into 2 batches
    assert len(length_batches(lengths, 128)) < len(batches)  # the price: a little more padding


def test_collate_pads_right_and_masks_the_padding() -> None:
    a = SheetRecord([1, 4, 7], [IGNORE_INDEX, IGNORE_INDEX, 7], [[NO_CELL] * 5, [9] * 5, [NO_CELL] * 5])
    b = SheetRecord([1, 8], [IGNORE_INDEX, 8], [[NO_CELL] * 5] * 2)
    batch = collate([a, b], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 4, 7], [1, 8, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7], [IGNORE_INDEX, 8, IGNORE_INDEX]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and batch.cell_ids.shape == (2, 3, 5)


def test_short_run_lowers_loss_and_reloads(stage0_world: Path, tmp_path: Path, tiny_llm) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "llm"
    metrics = pretrain_llm(stage0_world, out, tiny_llm, log_every=0)
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


def test_second_run_is_cached_and_config_change_retrains(stage0_world: Path, tmp_path: Path, tiny_llm) -> None:
    torch.set_num_threads(1)
    tiny_llm.steps = 3
    out = tmp_path / "llm"
    first = pretrain_llm(stage0_world, out, tiny_llm, log_every=0)
    again = pretrain_llm(stage0_world, out, tiny_llm, log_every=0)
    assert again["cached"] and again["final_val_loss"] == first["final_val_loss"]
    tiny_llm.steps = 4
    assert not pretrain_llm(stage0_world, out, tiny_llm, log_every=0)["cached"]


def test_lookup_labels_keep_only_the_looked_up_words(stage0_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(stage0_world / "tokenizer"))
    entry = {"id": "inventory-1", "template": "vicuna_v1", "lookup": "values",
             "sheet": "top left small blue cross top center empty empty empty top right large red star "
                      "middle left empty empty empty middle center empty empty empty middle right empty empty empty "
                      "bottom left empty empty empty bottom center empty empty empty bottom right empty empty empty",
             "conversations": [{"from": "human", "value": "<image>\nList every object by its shape, each followed by its position."},
                               {"from": "gpt", "value": "cross top left, star top right."}]}
    from synthetic.sheet import record_ids, word_id
    from synthetic.stage0.llm import lookup_labels
    record = record_ids(entry, tok, "vicuna_v1", entry["sheet"])
    keys = {word_id(tok, w) for w in ("cross", "star", "red", "blue")}
    stops = {tok.convert_tokens_to_ids(","), tok.convert_tokens_to_ids("."), tok.eos_token_id}
    narrowed = lookup_labels(record, keys, stops)
    kept = tok.convert_ids_to_tokens([t for t in narrowed.labels if t != IGNORE_INDEX])
    assert [t.lstrip("Ġ") for t in kept] == ["top", "left", "top", "right"]
    assert narrowed.input_ids == record.input_ids and narrowed.cell_ids == record.cell_ids


def test_lesson_records_are_the_flagged_ones_supervised_on_what_is_looked_up(stage0_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(stage0_world / "tokenizer"))
    entries = read_corpus(stage0_world / CORPUS_FILE)
    records = tokenize_corpus(entries, tok)
    by_lesson = lesson_records(records, entries, LESSONS, tok)
    assert list(by_lesson) == list(LESSONS) and all(by_lesson.values())  # every lesson has records
    for name in ("answer:exists", "answer:count_shape", "answer:text"):
        flagged = [e for e in entries if lesson(e) == name]
        assert len(by_lesson[name]) == len(flagged)
        for record, entry in zip(by_lesson[name], flagged):
            kept = tok.decode([t for t in record.labels if t != IGNORE_INDEX]).replace(" ", "")
            replies = "".join(t["value"] for t in entry["conversations"][1::2])
            # the replies without the end of turn, commas and periods (text chats answer in sentences, too)
            assert kept == replies.replace(" ", "").replace(",", "").replace(".", ""), entry["id"]
    sizes = [tok.decode([t for t in r.labels if t != IGNORE_INDEX]).split() for r in by_lesson["values:size"]]
    assert sizes and all(set(words) <= {"small", "large"} for words in sizes)
    with pytest.raises(ValueError, match="unknown warm-up lessons"):
        lesson_records(records, entries, ("values:colour",), tok)


def test_warmup_pools_add_one_lesson_at_a_time() -> None:
    a, b = (SheetRecord([i], [i], [[NO_CELL] * 5]) for i in (1, 2))
    pools = warmup_pools({"x": [a, a], "y": [b]}, ("x", "y"), batch=2)
    assert pools == [[a, a], [a, a, b]]
    with pytest.raises(ValueError, match="fewer than one batch of 3"):
        warmup_pools({"x": [a, a], "y": [b]}, ("x", "y"), batch=3)
    with pytest.raises(ValueError, match="'y' has no records"):
        warmup_pools({"x": [a, a], "y": []}, ("x", "y"), batch=2)
