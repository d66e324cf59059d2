"""Tests for conversation.records (parsing LLaVA/OpenAI records) and instruct_data.sources (lazy record files)."""
from __future__ import annotations

import json
import tracemalloc

import pytest

from conversation.errors import RecordError
from conversation.records import Conversation, Message, parse_record
from instruct_data.sources import ConcatRecords, FileRecords, load_records, stream_records


def llava(conv, image=None, rid="r1"):
    raw = {"id": rid, "conversations": [{"from": f, "value": v} for f, v in conv]}
    if image is not None:
        raw["image"] = image
    return raw


def test_llava_record_single_image_moves_placeholder_to_start():
    conv = parse_record(llava([("human", "What is this?\n<image>"), ("gpt", "A cat.")], "a.jpg"), 0)
    assert conv == Conversation("r1", [Message("user", "<image>\nWhat is this?"), Message("assistant", "A cat.")], ["a.jpg"])


def test_image_without_placeholder_is_prepended_to_first_user_turn():
    conv = parse_record(llava([("system", "Be brief."), ("human", "Describe."), ("gpt", "A dog.")], "d.png"), 0)
    assert conv.messages[1].content == "<image>\nDescribe."
    assert conv.messages[0] == Message("system", "Be brief.")


def test_multi_image_keeps_explicit_placement():
    raw = llava([("human", "Compare <image> and <image> please"), ("gpt", "Same.")], ["a.png", "b.png"])
    conv = parse_record(raw, 3)
    assert conv.messages[0].content == "Compare <image> and <image> please"
    assert conv.images == ["a.png", "b.png"]


def test_text_only_record_and_missing_id():
    conv = parse_record({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, 7)
    assert conv.id == "#7" and conv.images == []


def test_openai_messages_with_parts():
    raw = {
        "id": 5,
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": "A box."},
        ],
    }
    conv = parse_record(raw, 0)
    assert conv.id == "5" and conv.images == ["x.png"]
    assert conv.messages[0].content == "<image>\nWhat?"


@pytest.mark.parametrize(
    "raw, field, reason",
    [
        (llava([("gpt", "a"), ("human", "b")]), "turn 0", "role 'assistant' where 'user'"),
        (llava([("human", "a"), ("bot", "b")]), "conversations[1].from", "unknown role 'bot'"),
        (llava([("human", "a"), ("gpt", "  ")]), "conversations[1].value", "empty turn"),
        (llava([("human", "a"), ("gpt", "b"), ("human", "c")]), "turn 2", "ends with a user turn"),
        (llava([("human", "<image> <image>"), ("gpt", "b")], "a.png"), "image", "2 <image> placeholder(s) for 1 image"),
        (llava([("human", "<image>"), ("gpt", "b")]), "image", "1 <image> placeholder(s) for 0 image"),
        (llava([("human", "q"), ("gpt", "<image> b")], "a.png"), "turn 1", "in a assistant turn"),
        ({"id": "r1", "conversations": [{"from": "human", "value": "a", "weight": 1}, {"from": "gpt", "value": "b"}]},
         "conversations[0]", "unknown keys ['weight']"),
        ({"id": "r1", "image": 3, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
         "image", "non-empty string"),
        ({"id": "r1"}, "conversations", "neither"),
        (llava([("human", "q"), ("gpt", "a")], ["a.png", "b.png"]), "image", "need explicit placement"),
    ],
)
def test_bad_records_name_id_field_and_reason(raw, field, reason):
    with pytest.raises(RecordError) as info:
        parse_record(raw, 0)
    assert info.value.record_id == "r1"
    assert info.value.field == field
    assert reason in info.value.reason


def _records(n):
    return [llava([("human", f"q{i} <image>"), ("gpt", f"answer number {i} é")], f"{i}.png", rid=f"id{i}") for i in range(n)]


def test_json_list_and_jsonl_index_by_offsets(tmp_path):
    recs = _records(50)
    (tmp_path / "a.json").write_text(json.dumps(recs, indent=1, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n\n", encoding="utf-8")
    for name in ("a.json", "a.jsonl"):
        src = load_records(tmp_path / name, image_roots=[tmp_path])
        assert len(src) == 50
        assert src.raw(37) == recs[37]
        assert src.conversation(12).id == "id12"
        assert src.stats(3) == (6, 1)  # "q3 <image>" + "answer number 3 é"
        assert src.image_roots(0) == [tmp_path]


def test_json_list_small_chunks_cross_boundaries(tmp_path, monkeypatch):
    import instruct_data.record_files as record_files

    recs = _records(30)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    whole = FileRecords(path)
    monkeypatch.setattr(record_files, "CHUNK_CHARS", 7)  # every record and number straddles chunk ends
    small = FileRecords(path)
    assert list(small.offsets) == list(whole.offsets) and len(small) == 30
    assert [small.raw(i) for i in range(30)] == recs


def test_json_list_with_bom(tmp_path):
    recs = _records(3)
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(recs).encode())
    src = load_records(path)
    assert [src.raw(i) for i in range(3)] == recs


def test_malformed_json_list_does_not_read_the_whole_file(tmp_path, monkeypatch):
    import instruct_data.record_files as record_files

    monkeypatch.setattr(record_files, "CHUNK_CHARS", 64)
    monkeypatch.setattr(record_files, "MAX_RECORD_CHARS", 256)
    path = tmp_path / "bad.json"
    path.write_text('[{"id": 1}, {"id": oops}, ' + ", ".join(['{"id": 2}'] * 5000) + "]")
    with pytest.raises(ValueError, match="record #1"):
        load_records(path)


def test_malformed_jsonl_line_is_a_record_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(_records(1)[0]) + "\n{not json\n")
    src = load_records(path)
    assert len(src) == 2
    with pytest.raises(RecordError, match="malformed JSON"):
        src.raw(1)


def test_malformed_json_list_names_the_position(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"id": 1}, {"id": ]')
    with pytest.raises(ValueError, match="record #1"):
        load_records(path)


def _peak(fn):
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, peak


def test_index_memory_is_flat_in_records(tmp_path, monkeypatch):
    import instruct_data.record_files as record_files

    monkeypatch.setattr(record_files, "CHUNK_CHARS", 1 << 16)
    peaks = {}
    for n in (5000, 10000):
        path = tmp_path / f"big{n}.json"
        path.write_text(json.dumps(_records(1) * n), encoding="utf-8")
        src, peaks[n] = _peak(lambda: load_records(path))
        assert len(src) == n
    _, full = _peak(lambda: json.loads(path.read_text(encoding="utf-8")))
    # the index costs 4 arrays of 8 bytes a record (+ array over-allocation); json.load costs ~1 KB a record
    assert peaks[10000] - peaks[5000] < 48 * 5000, peaks
    assert peaks[10000] < full / 5, (peaks, full)


def test_concat_and_parquet(tmp_path):
    import datasets

    recs = _records(5)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    datasets.Dataset.from_list(recs).to_parquet(str(tmp_path / "b.parquet"))
    src = load_records([tmp_path / "a.jsonl", tmp_path / "b.parquet"])
    assert isinstance(src, ConcatRecords) and len(src) == 10
    assert src.conversation(7).id == "id2"
    assert src.source_name(7) == "b" and src.source_name(0) == "a"


def test_stream_records_yields_conversations_and_errors(tmp_path):
    import datasets

    recs = _records(3)
    recs[1]["conversations"][1]["value"] = ""
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{oops\n")
    datasets.Dataset.from_list(_records(2)).to_parquet(str(tmp_path / "b.parquet"))
    out = list(stream_records([tmp_path / "a.jsonl", tmp_path / "b.parquet"]))
    assert [type(x).__name__ for x in out] == ["Conversation", "RecordError", "Conversation", "RecordError", "Conversation", "Conversation"]
    assert out[1].record_id == "id1" and "line 4: malformed JSON" in out[3].reason
    assert out[5].id == "id1"


def test_unsupported_suffix(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        load_records(tmp_path / "a.csv")
