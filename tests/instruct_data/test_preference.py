"""Preference records: parsing (bad pairs named), reply-only labels, dataset items, collation, validate and audit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conversation.errors import RecordError
from conversation.records import parse_record
from conversation.tokenize import IGNORE_INDEX, tokenize_conversation
from instruct_data.audit import audit_records
from instruct_data.item import Skipped
from instruct_data.preference import PairItem, PreferenceDataset, collate_pairs, tokenize_reply
from instruct_data.preference_records import is_preference_record, parse_preference
from instruct_data.sources import load_records
from instruct_data.validate import ValidationConfig, validate_file
from vision_encoders.preprocess import ImageProcessor

K = 3
processor = ImageProcessor(size=8, mean=(0.0,) * 3, std=(1.0,) * 3, aspect_ratio="resize")


def pair(rid: str, chosen: str = "It is red.", rejected: str = "It is blue.", **extra) -> dict:
    record = {"id": rid, "image": "red.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}],
              "chosen": chosen, "rejected": rejected}
    record.update(extra)
    return record


BAD = {  # id -> (record, the field named)
    "same": (pair("same", rejected=" It is red. "), "rejected"),
    "empty": (pair("empty", chosen="  "), "chosen"),
    "no-rejected": ({k: v for k, v in pair("no-rejected").items() if k != "rejected"}, "rejected"),
    "ends-gpt": (pair("ends-gpt", conversations=[{"from": "human", "value": "<image>\nColour?"},
                                                 {"from": "gpt", "value": "Red."}]), "conversations[1]"),
    "bad-role": (pair("bad-role", conversations=[{"from": "robot", "value": "<image>\nColour?"}]), "conversations[0]"),
}


@pytest.fixture()
def pref_file(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / "imgs" / "red.png")
    multi = pair("multi", conversations=[{"from": "human", "value": "<image>\nColour?"},
                                         {"from": "gpt", "value": "Red."},
                                         {"from": "human", "value": "Say it again."}])
    records = [pair("ok"), multi] + [record for record, _ in BAD.values()]
    path = tmp_path / "prefer.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.mark.parametrize("rid", sorted(BAD))
def test_bad_pairs_are_named(rid: str) -> None:
    record, field = BAD[rid]
    assert is_preference_record(record)
    with pytest.raises(RecordError) as err:
        parse_preference(record, 0)
    assert err.value.record_id == rid and err.value.field.startswith(field.split(".")[0])


def test_a_pair_is_its_prompt_and_two_replies() -> None:
    parsed = parse_preference(pair("ok"), 0)
    assert parsed.images == ["red.png"] and [m.role for m in parsed.prompt] == ["user"]
    assert parsed.prompt[0].content == "<image>\nWhat colour?"
    assert parsed.conversation("rejected").messages[-1].content == "It is blue."
    assert not is_preference_record({"conversations": []})


def test_labels_cover_the_last_reply_only(bpe_tokenizer) -> None:
    image_id = bpe_tokenizer.convert_tokens_to_ids("<image>")
    kw = dict(image_token_id=image_id, num_image_tokens=K)
    single = parse_preference(pair("ok"), 0).conversation("chosen")
    ours = tokenize_reply(single, "vicuna_v1", bpe_tokenizer, **kw)
    # one turn: exactly the instruct labels (reply + end-of-turn token)
    theirs = tokenize_conversation(single, "vicuna_v1", bpe_tokenizer, **kw)
    assert ours.input_ids == theirs.input_ids and ours.labels == theirs.labels
    multi = parse_preference(pair("m", conversations=[{"from": "human", "value": "<image>\nColour?"},
                                                      {"from": "gpt", "value": "Red."},
                                                      {"from": "human", "value": "Again."}]), 0)
    sample = tokenize_reply(multi.conversation("chosen"), "vicuna_v1", bpe_tokenizer, **kw)
    supervised = [t for t in sample.labels if t != IGNORE_INDEX]
    assert bpe_tokenizer.decode(supervised).replace(" ", "").startswith("Itisred.")  # "Red." is context only
    assert bpe_tokenizer.eos_token_id == supervised[-1]
    # chosen and rejected share the prompt's tokens; labels start where the replies differ from the prompt
    rejected = tokenize_reply(multi.conversation("rejected"), "vicuna_v1", bpe_tokenizer, **kw)
    start = next(i for i, t in enumerate(sample.labels) if t != IGNORE_INDEX)
    assert sample.input_ids[:start] == rejected.input_ids[:start]
    assert next(i for i, t in enumerate(rejected.labels) if t != IGNORE_INDEX) == start


def test_dataset_skips_bad_pairs_by_id_and_collates_chosen_then_rejected(pref_file: Path, bpe_tokenizer) -> None:
    records = load_records(pref_file, image_roots=[pref_file.parent / "imgs"])
    ds = PreferenceDataset(records, "vicuna_v1", bpe_tokenizer,
                           image_token_id=bpe_tokenizer.convert_tokens_to_ids("<image>"), num_image_tokens=K,
                           image_processor=processor)
    items = [ds[i] for i in range(len(ds))]
    assert [type(it).__name__ for it in items[:2]] == ["PairItem", "PairItem"]
    skipped = {it.id: it.reason for it in items[2:]}
    assert set(skipped) == set(BAD) and all(isinstance(it, Skipped) for it in items[2:])
    assert "identical to 'chosen'" in skipped["same"] and "empty reply" in skipped["empty"]
    assert "must end with a human turn" in skipped["ends-gpt"]
    with pytest.raises(RecordError, match="'same'"):
        PreferenceDataset(records, "vicuna_v1", bpe_tokenizer, image_token_id=0, num_image_tokens=K,
                          image_processor=processor, strict=True)[2]
    ds.reference = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]] + [[float("nan")] * 2] * 5, dtype=torch.float64).numpy()
    ok, multi = ds[0], ds[1]
    assert isinstance(ok, PairItem) and ok.reference == (-1.0, -2.0)
    assert ds.lengths()[0] == max(len(ok.chosen.input_ids), len(ok.rejected.input_ids))
    batch = collate_pairs([ok, items[2], multi], pad_token_id=0)
    assert batch.preference and batch.num_rows == 4 and batch.num_records == 2
    assert batch.ids == ["ok", "multi", "ok", "multi"] and batch.skipped == [("same", skipped["same"])]
    assert batch.reference_logps.tolist() == [-1.0, -3.0, -2.0, -4.0]
    assert batch.image_counts.tolist() == [1, 1, 1, 1] and batch.pixel_values.shape[0] == 4
    n = len(ok.rejected.input_ids)
    assert batch.input_ids[2, :n].tolist() == ok.rejected.input_ids.tolist()
    # a record whose image cannot be used takes both its rows out of the batch, references with them
    kept = batch.without_records([1, 3], pad_token_id=0)
    assert kept.ids == ["ok", "ok"] and kept.reference_logps.tolist() == [-1.0, -2.0] and kept.num_records == 1


def test_validate_and_audit_know_preference_records(pref_file: Path, bpe_tokenizer, tmp_path: Path) -> None:
    image_id = bpe_tokenizer.convert_tokens_to_ids("<image>")
    report = tmp_path / "problems.jsonl"
    with report.open("w") as f:
        summary = validate_file(pref_file, ValidationConfig(
            image_roots=[pref_file.parent / "imgs"], tokenizer=bpe_tokenizer, template="vicuna_v1",
            num_image_tokens=K, image_token_id=image_id), f)
    problems = [json.loads(line) for line in report.read_text().splitlines()]
    assert {p["record_id"] for p in problems} == set(BAD)
    assert all(p["reason"] == "bad preference pair" for p in problems)
    assert (summary.records, summary.ok, summary.bad) == (7, 2, 5)
    records = load_records(pref_file, image_roots=[pref_file.parent / "imgs"])
    audit = audit_records(records, "vicuna_v1", bpe_tokenizer, image_token_id=image_id, num_image_tokens=K,
                          max_length=None, max_skip_ratio=1.0)
    stats = next(iter(audit.sources.values()))
    assert (stats.audited, stats.trained) == (7, 2) and stats.supervised_tokens > 0
    assert set(audit.skipped()) == {"record"}
    with pytest.raises(RecordError):  # an instruct record's parser still refuses a prompt without a reply
        parse_record(pair("ok"), 0)
