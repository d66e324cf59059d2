"""The one reader of record files: per-entry errors (NaN, invalid UTF-8, deep nesting), positions, byte spans."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conversation.errors import RecordError, RecordFileError
from conversation.records import parse_record
from instruct_data.record_files import iter_raw_records, value_end
from instruct_data.sources import FileRecords


def _rec(i: int) -> dict:
    return {"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i} é"}, {"from": "gpt", "value": "a"}]}


BAD = [b'{"id": "nan", "x": NaN}', b'{"id": "inf", "x": -Infinity}', b'{"id": "utf8", "v": "caf\xe9"}',
       b'{"id": "deep", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"]


@pytest.mark.parametrize("chunk", [None, 5])
def test_bad_entries_of_a_json_list_are_per_record_and_the_rest_is_read(tmp_path: Path, chunk: int | None) -> None:
    body = [json.dumps(_rec(0)).encode(), *BAD, json.dumps(_rec(1)).encode()]
    path = tmp_path / "d.json"
    path.write_bytes(b"[\r\n" + b",\r\n".join(body) + b"\r\n]")  # CRLF: byte offsets stay exact
    items = list(iter_raw_records(path, chunk_chars=chunk))
    assert [it.raw for it in (items[0], items[-1])] == [_rec(0), _rec(1)]
    assert [it.error is None for it in items] == [True, False, False, False, False, True]
    assert "NaN is not valid JSON" in items[1].error and "-Infinity" in items[2].error
    assert items[3].error == "invalid UTF-8 bytes in the record" and items[3].raw["id"] == "utf8"
    assert "nested deeper" in items[4].error and [it.line for it in items] == [2, 3, 4, 5, 6, 7]
    data = path.read_bytes()
    assert [data[it.offset:it.offset + it.size] for it in items] == body
    src = FileRecords(path)
    assert len(src) == 6 and src.raw(5) == _rec(1)
    with pytest.raises(RecordError, match="d.json line 6: malformed JSON .*nested deeper"):
        src.raw(4)


def test_bad_lines_of_jsonl_are_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_rec(0)).encode() + b"\n\n" + b"\n".join(BAD)
                     + b'\n{"id": 1,}\n' + json.dumps(_rec(1)).encode())
    items = list(iter_raw_records(path))
    assert [(it.line, it.error is None) for it in items] == [(1, True), (3, False), (4, False), (5, False),
                                                              (6, False), (7, False), (8, True)]
    assert items[5].error.startswith("column 10:")
    with pytest.raises(RecordError, match="d.jsonl line 7: malformed JSON"):
        FileRecords(path).raw(5)


@pytest.mark.parametrize("content, message", [
    (b"", "no records in the file (zero bytes)"),
    ('[{"id": 1}]'.encode("utf-16"), "not UTF-8"),
    (b'{"id": 1}\n{"id": 2}\n', "not an object"),
    (b"[{'id': 1}]", "malformed JSON"),
    (b'[{"id": 1}] [{"id": 2}]', "after the closing"),
    (b'[{"id": 1}, {"id": 2}', "not closed"),
    (b"[ ]", "no records in the file (an empty list"),
])
def test_unreadable_json_files_are_one_error_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(content)
    with pytest.raises(RecordFileError, match=re.escape(message)) as info:
        FileRecords(path)
    assert str(info.value).startswith(f"{path}: ")


def test_blank_jsonl_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("\n \n\t\n")
    with pytest.raises(RecordFileError, match="no records"):
        FileRecords(tmp_path / "d.jsonl")
    with pytest.raises(RecordFileError, match="not found"):
        list(iter_raw_records(tmp_path / "nope.json"))


def test_value_end_skips_strings_and_escapes() -> None:
    text = '{"a": "]}\\"]", "b": [[{}]]} tail'
    assert text[:value_end(text, 0)] == '{"a": "]}\\"]", "b": [[{}]]}'
    assert value_end("[[[", 0) is None


def test_lone_surrogates_are_a_record_error_not_a_tokenizer_crash() -> None:
    turns = [{"from": "human", "value": "x \ud800"}, {"from": "gpt", "value": "a"}]
    with pytest.raises(RecordError, match=r"conversations\[0\].value: text is not valid Unicode"):
        parse_record({"id": "s\udc80", "conversations": turns}, 0)
    try:
        parse_record({"id": "s\udc80", "conversations": turns}, 0)
    except RecordError as exc:
        assert exc.record_id == "s\\udc80"  # printable and writable as UTF-8


def test_the_index_is_flat_arrays_of_20_bytes_a_record(tmp_path) -> None:
    """Every rank holds the index of every record: offsets (8 bytes) and size, words, images (4 each), no Python
    object per record."""
    import json as _json

    from instruct_data.sources import load_records

    path = tmp_path / "r.json"
    path.write_text(_json.dumps([{"id": str(i), "conversations": [{"from": "human", "value": "a b"},
                                                                 {"from": "gpt", "value": "c"}]} for i in range(50)]))
    records = load_records(path)
    arrays = (records.offsets, records.sizes, records.words, records.n_images)
    assert sum(a.itemsize for a in arrays) == 20 and all(len(a) == 50 for a in arrays)
    assert records.stats(3) == (3, 0)
