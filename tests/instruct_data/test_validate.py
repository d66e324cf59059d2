"""Tests for instruct_data.validate: every kind of bad input named with its reason, streaming JSON reading."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conversation.testing import noise_image, png_with_declared_size
from instruct_data.validate import (
    RawItem,
    RecordValidator,
    ValidationConfig,
    classify_record,
    iter_raw_records,
    validate_file,
)


def _noise(size: tuple[int, int] = (32, 24)) -> Image.Image:
    return noise_image(size, seed=1)


def _rec(rid: str, image: Any = None, turns: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    turns = turns or [("human", "<image>\nWhat is shown?"), ("gpt", "A square.")]
    record: dict[str, Any] = {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        record["image"] = image
    return record


def build_bad_world(tmp_path: Path) -> tuple[Path, Path, dict[str, set[str]]]:
    """An image root with broken files, a JSONL of records using them, and the reasons expected per record."""
    root = tmp_path / "images"
    root.mkdir()
    _noise().save(root / "good.jpg")
    _noise((64, 64)).save(root / "full.jpg")
    data = (root / "full.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "zero.jpg").write_bytes(b"")
    _noise().save(root / "png_named.jpg", format="PNG")
    Image.new("CMYK", (16, 16), (0, 128, 255, 10)).save(root / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 50000, dtype=np.uint16)).save(root / "sixteen.png")
    (root / "bomb.png").write_bytes(png_with_declared_size(200_000, 200_000))
    (root / "notes.jpg").write_text("not an image")
    _noise().save(tmp_path / "secret.jpg")

    records: list[Any] = [
        _rec("good", "good.jpg"),
        _rec("text_only", turns=[("human", "Hello?"), ("gpt", "Hi.")]),
        _rec("truncated", "trunc.jpg"),
        _rec("zero_bytes", "zero.jpg"),
        _rec("png_named_jpg", "png_named.jpg"),
        _rec("cmyk", "cmyk.jpg"),
        _rec("sixteen_bit", "sixteen.png"),
        _rec("bomb", "bomb.png"),
        _rec("not_image", "notes.jpg"),
        _rec("missing", "nowhere.jpg"),
        _rec("dotdot", "../secret.jpg"),
        _rec("absolute", str(tmp_path / "secret.jpg")),
        _rec("gpt_first", turns=[("gpt", "I start."), ("human", "Odd.")]),
        _rec("unknown_role", turns=[("human", "Hi"), ("robot", "Beep")]),
        _rec("empty_turn", "good.jpg", turns=[("human", "<image>\nWhat?"), ("gpt", "   ")]),
        _rec("two_placeholders", "good.jpg", turns=[("human", "<image>\n<image>\nCompare."), ("gpt", "Same.")]),
        _rec("no_image_for_placeholder", turns=[("human", "<image>\nWhat?"), ("gpt", "Nothing.")]),
        _rec("lone_image_no_placeholder", "good.jpg", turns=[("human", "What?"), ("gpt", "Noise.")]),
        {"id": "no_conversations", "image": "good.jpg"},
        ["not", "an", "object"],
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(3, '{"id": "broken", "conversations": [')  # malformed JSON on line 4
    lines.insert(6, "")  # blank lines are skipped
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    expected = {
        "good": set(), "text_only": set(), "cmyk": set(), "sixteen_bit": set(), "png_named_jpg": set(),
        "lone_image_no_placeholder": set(),
        "truncated": {"truncated"}, "zero_bytes": {"empty file"}, "bomb": {"decompression bomb"},
        "not_image": {"not an image"}, "missing": {"missing file"}, "dotdot": {"outside image root"},
        "absolute": {"outside image root"}, "gpt_first": {"wrong roles"}, "unknown_role": {"wrong roles"},
        "empty_turn": {"empty turn"}, "two_placeholders": {"image placeholder count"},
        "no_image_for_placeholder": {"image placeholder count"}, "no_conversations": {"schema"},
        "#20": {"schema"}, "line 4": {"malformed json"},
    }
    return path, root, expected


@pytest.fixture()
def bad_world(tmp_path: Path) -> tuple[Path, Path, dict[str, set[str]]]:
    return build_bad_world(tmp_path)


def _problems_by_record(report: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in report.read_text().splitlines():
        p = json.loads(line)
        found.setdefault(p["record_id"], []).append(p)
    return found


def test_every_bad_case_named_with_its_reason(bad_world: tuple[Path, Path, dict[str, set[str]]], tmp_path: Path) -> None:
    path, root, expected = bad_world
    report = tmp_path / "problems.jsonl"
    with report.open("w") as f:
        summary = validate_file(path, ValidationConfig(image_roots=[root]), f)
    found = _problems_by_record(report)
    errors = {rid: {p["reason"] for p in ps if p["severity"] == "error"} for rid, ps in found.items()}
    for rid, reasons in expected.items():
        assert errors.get(rid, set()) == reasons, rid
    assert set(errors) - set(expected) == set()
    # the PNG named .jpg loads: only a warning
    assert [p["reason"] for p in found["png_named_jpg"]] == ["extension mismatch"]
    assert found["png_named_jpg"][0]["severity"] == "warning"
    # the malformed line is reported with its line number, and indexes stay aligned after it
    assert found["line 4"][0]["line"] == 4 and found["line 4"][0]["index"] == 3
    assert found["truncated"][0]["index"] == 2 and found["zero_bytes"][0]["index"] == 4
    assert found["missing"][0]["field"] == "image[0]" and "nowhere.jpg" in found["missing"][0]["detail"]
    n_bad = sum(1 for r in expected.values() if r)
    assert (summary.records, summary.bad, summary.ok) == (21, n_bad, 21 - n_bad)
    assert summary.bad_by_reason["outside image root"] == 2 and summary.warnings_by_reason["extension mismatch"] == 1
    assert "bad records by reason:" in summary.table()


def test_problem_rows_have_the_documented_keys(bad_world: tuple[Path, Path, dict[str, set[str]]], tmp_path: Path) -> None:
    path, root, _ = bad_world
    report = tmp_path / "p.jsonl"
    with report.open("w") as f:
        validate_file(path, ValidationConfig(image_roots=[root]), f)
    for line in report.read_text().splitlines():
        assert {"record_id", "index", "field", "reason"} <= set(json.loads(line))


def test_low_max_pixels_flags_a_normal_image_as_bomb(tmp_path: Path) -> None:
    _noise((32, 24)).save(tmp_path / "a.png")
    v = RecordValidator(ValidationConfig(image_roots=[tmp_path], max_pixels=100))
    problems = v.check(RawItem(0, 1, raw=_rec("r", "a.png")))
    assert [(p.reason, p.field) for p in problems] == [("decompression bomb", "image[0]")]


def test_no_decode_skips_decoding_but_not_presence(bad_world: tuple[Path, Path, dict[str, set[str]]]) -> None:
    _, root, _ = bad_world
    v = RecordValidator(ValidationConfig(image_roots=[root], decode_images=False))
    assert v.check(RawItem(0, 1, raw=_rec("r", "trunc.jpg"))) == []
    assert [p.reason for p in v.check(RawItem(1, 2, raw=_rec("r", "gone.jpg")))] == ["missing file"]


def test_image_verdicts_are_cached_and_bounded(tmp_path: Path) -> None:
    for i in range(5):
        _noise().save(tmp_path / f"{i}.jpg")
    v = RecordValidator(ValidationConfig(image_roots=[tmp_path], image_cache_size=3))
    for i in range(5):
        assert v.check(RawItem(i, i + 1, raw=_rec(str(i), f"{i}.jpg"))) == []
    assert len(v._image_cache) == 3


def test_several_images_each_checked(tmp_path: Path) -> None:
    _noise().save(tmp_path / "a.jpg")
    v = RecordValidator(ValidationConfig(image_roots=[tmp_path]))
    rec = _rec("multi", ["a.jpg", "b.jpg"], turns=[("human", "<image> and <image>: differ?"), ("gpt", "Yes.")])
    assert [(p.field, p.reason) for p in v.check(RawItem(0, 1, raw=rec))] == [("image[1]", "missing file")]


def test_classify_lists_all_problems_of_a_record() -> None:
    raw = _rec("x", "a.jpg", turns=[("gpt", ""), ("gpt", "<image> hi")])
    reasons = sorted(r for _, r, _ in classify_record(raw))
    assert reasons == ["empty turn", "image placeholder count", "wrong roles"]
    assert classify_record(_rec("fine", "a.jpg")) == []


# ---- streaming JSON list reading ----

def _records(n: int) -> list[dict[str, Any]]:
    return [_rec(f"r{i}", f"{i}.jpg", turns=[("human", "<image>\n" + "word " * (i % 7)), ("gpt", "é ✓ " * i)])
            for i in range(n)]


@pytest.mark.parametrize("indent", [None, 2])
def test_json_list_streams_across_chunk_boundaries(tmp_path: Path, indent: int | None) -> None:
    records = _records(40)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=False))
    items = list(iter_raw_records(path, chunk_chars=37))
    assert [it.raw for it in items] == records
    assert all(it.error is None for it in items)
    if indent:  # line numbers point at each record's opening brace
        text_lines = path.read_text().splitlines()
        assert all(text_lines[it.line - 1].strip() == "{" for it in items)


def test_json_list_empty_and_malformed(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert list(iter_raw_records(tmp_path / "empty.json")) == []
    (tmp_path / "obj.json").write_text('{"id": 1}')
    [item] = iter_raw_records(tmp_path / "obj.json")
    assert item.fatal and "JSON list" in item.error
    (tmp_path / "bad.json").write_text('[\n{"id": "a", "conversations": []},\n{"id": "b", oops}\n]')
    items = list(iter_raw_records(tmp_path / "bad.json", chunk_chars=8))
    assert items[0].raw == {"id": "a", "conversations": []}
    assert items[1].error is not None and items[1].line == 3 and items[1].fatal
    (tmp_path / "open.json").write_text('[{"id": "a"},')
    assert list(iter_raw_records(tmp_path / "open.json"))[-1].fatal


def test_malformed_json_list_counts_as_bad(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('[{"id": "a", "conversations": [{"from": "human", "value": "x"}, '
                                       '{"from": "gpt", "value": "y"}]},\n{"id": "b" "conversations": 1}]')
    summary = validate_file(tmp_path / "bad.json", ValidationConfig(image_roots=[tmp_path]))
    assert (summary.records, summary.ok, summary.bad) == (2, 1, 1)
    assert summary.bad_by_reason == {"malformed json": 1}


def test_parquet_records(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_rec("t", turns=[("human", "Hi"), ("gpt", "Hello")]), _rec("u", turns=[("gpt", "Hello")])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    summary = validate_file(tmp_path / "d.parquet", ValidationConfig(image_roots=[tmp_path]))
    assert (summary.records, summary.ok, summary.bad_by_reason) == (2, 1, {"wrong roles": 1})


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported suffix"):
        list(iter_raw_records(tmp_path / "d.csv"))


def test_needs_a_root_and_complete_token_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image root"):
        RecordValidator(ValidationConfig(image_roots=[]))
    with pytest.raises(ValueError, match="template"):
        RecordValidator(ValidationConfig(image_roots=[tmp_path], tokenizer=object()))


# ---- token lengths (tiny byte-level BPE from tests/conftest.py) ----

K = 8


def _token_validator(tokenizer: Any, root: Path, max_length: int | None) -> RecordValidator:
    return RecordValidator(ValidationConfig(
        image_roots=[root], tokenizer=tokenizer, template="vicuna_v1", num_image_tokens=K,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), max_length=max_length))


def _length(tokenizer: Any, raw: dict[str, Any]) -> tuple[int, int]:
    """(total tokens, end of the image block) of a record under vicuna_v1 with K image tokens."""
    from conversation.records import parse_record
    from conversation.tokenize import tokenize_conversation

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = tokenize_conversation(parse_record(raw, 0), "vicuna_v1", tokenizer, image_token_id=image_id,
                                num_image_tokens=K).input_ids
    positions = [i for i, t in enumerate(ids) if t == image_id]
    assert len(positions) == (K if "image" in raw else 0)
    return len(ids), (positions[-1] + 1 if positions else 0)


def test_token_lengths(bpe_tokenizer: Any, tmp_path: Path) -> None:
    _noise().save(tmp_path / "a.jpg")
    long_reply = _rec("long", "a.jpg", turns=[("human", "<image>\nDescribe."), ("gpt", "red square " * 30)])
    total, image_end = _length(bpe_tokenizer, long_reply)
    assert total > image_end + 20

    def reasons(max_length: int | None, raw: dict[str, Any]) -> list[tuple[str, str]]:
        return [(p.reason, p.severity) for p in _token_validator(bpe_tokenizer, tmp_path, max_length)
                .check(RawItem(0, 1, raw=raw))]

    assert reasons(None, long_reply) == []
    assert reasons(total, long_reply) == []
    assert reasons(total - 5, long_reply) == [("will be truncated", "warning")]
    assert reasons(image_end - 1, long_reply) == [("images beyond max length", "error")]
    # the image fits but the reply starts after the cut: nothing left to learn
    assert reasons(image_end + 1, long_reply) == [("no supervised token within max length", "error")]


def test_a_record_the_template_cannot_render_is_a_tokenization_error(bpe_tokenizer: Any, tmp_path: Path) -> None:
    bpe_tokenizer.save_pretrained(tmp_path / "tok")
    tok = type(bpe_tokenizer).from_pretrained(tmp_path / "tok")  # a private copy: the fixture is shared
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}"
                         "{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    v = RecordValidator(ValidationConfig(image_roots=[tmp_path], tokenizer=tok, template="tokenizer",
                                         num_image_tokens=K, image_token_id=tok.convert_tokens_to_ids("<image>")))
    fine = _rec("fine", turns=[("human", "Hello?"), ("gpt", "Hi there.")])
    with_system = _rec("sys", turns=[("system", "Be brief."), ("human", "Hello?"), ("gpt", "Hi.")])
    assert v.check(RawItem(0, 1, raw=fine)) == []
    [problem] = v.check(RawItem(1, 2, raw=with_system))
    assert (problem.record_id, problem.reason, problem.field) == ("sys", "tokenization", "tokens.template")
    assert "no system role" in problem.detail


def test_openai_messages_with_inline_images(tmp_path: Path) -> None:
    _noise().save(tmp_path / "a.jpg")
    v = RecordValidator(ValidationConfig(image_roots=[tmp_path]))
    ok = {"id": "o", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "a.jpg"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "Noise."}]}
    assert v.check(RawItem(0, 1, raw=ok)) == []
    bad = {"id": "b", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "a.jpg"}, {"type": "text", "text": "What?"}]},
        {"role": "user", "content": "again"}]}
    assert [p.reason for p in v.check(RawItem(1, 2, raw=bad))] == ["wrong roles"]


def test_workers_give_the_same_report_in_order(bad_world: tuple[Path, Path, dict[str, set[str]]], tmp_path: Path) -> None:
    path, root, _ = bad_world
    reports = []
    for workers in (1, 2):
        report = tmp_path / f"p{workers}.jsonl"
        with report.open("w") as f:
            summary = validate_file(path, ValidationConfig(image_roots=[root]), f, workers=workers, chunk_size=2)
        reports.append((report.read_text(), summary.bad, dict(summary.bad_by_reason)))
    assert reports[0] == reports[1] and reports[0][1] == 15


def test_byte_order_mark_is_not_malformed_json(tmp_path: Path) -> None:
    rec = _rec("t", turns=[("human", "Hi"), ("gpt", "Hello")])
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(rec).encode() + b"\n")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([rec]).encode())
    for name in ("bom.jsonl", "bom.json"):
        assert [it.raw for it in iter_raw_records(tmp_path / name)] == [rec], name


def test_workers_parse_their_records_from_the_file_and_match_one_process(tmp_path: Path) -> None:
    """With workers the parent sends each well-formed entry as its byte span only and the worker parses it; the
    reports over the hostile corpus (bad bytes, NaN, bad entries, a BOM; list and lines) and over files that
    cannot be read whole equal one process's, problem for problem."""
    from conversation.testing import (
        RAW_BAD_ENTRIES,
        broken_record_files,
        hostile_images,
        hostile_records,
        record_lines_bytes,
        record_list_bytes,
    )
    from instruct_data import validate

    images = hostile_images(tmp_path / "images", tmp_path / "outside")
    pairs = hostile_records(images)
    records = [r for r, _ in pairs]
    (tmp_path / "c.json").write_bytes(record_list_bytes(records, list(RAW_BAD_ENTRIES.values())))
    (tmp_path / "c.jsonl").write_bytes(record_lines_bytes(records, list(RAW_BAD_ENTRIES.values()), bom=True))
    good = [r for r, reason in pairs if reason is None and isinstance(r, dict) and r["id"] != "long"][:4]
    broken = broken_record_files(tmp_path / "broken", good)
    config = ValidationConfig(image_roots=[tmp_path / "images"])
    for path in [tmp_path / "c.json", tmp_path / "c.jsonl", *(tmp_path / "broken" / name for name in broken)]:
        reports = []
        for workers in (1, 2):
            report = tmp_path / f"{path.name}.{workers}.jsonl"
            with report.open("w", encoding="utf-8") as f:
                summary = validate_file(path, config, f, workers=workers, chunk_size=3)
            reports.append((report.read_text(encoding="utf-8"), summary.records, summary.bad, summary.notes))
        assert reports[0] == reports[1], path.name
    # The worker's side, in this process: good entries travel as spans and are parsed from the file.
    items = list(iter_raw_records(tmp_path / "c.jsonl"))
    spans = [validate._span_only(it) for it in items]
    assert sum(s.raw is None for s in spans) > len(items) // 2  # most entries travel without their record
    validate._worker_init(config)
    serial = validate.RecordValidator(config)
    got = validate._worker_check(tmp_path / "c.jsonl", spans)
    assert got == [serial.check_counted(it) for it in items]
    wrong = dataclasses.replace(spans[next(k for k, s in enumerate(spans) if s.raw is None)])
    wrong.size -= 2  # a span that no longer holds one value: the parent checks its own parse instead
    assert validate._worker_check(tmp_path / "c.jsonl", [wrong]) == [None]
