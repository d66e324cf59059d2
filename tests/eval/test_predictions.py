"""Prediction files: every accepted results format, duplicates, torn and corrupt JSONL lines."""
import json
from pathlib import Path

import pytest

from eval.predictions import append_records, read_done, read_prediction_file, repair_tail
from eval.items import BenchmarkFileError


@pytest.mark.parametrize("rows,expected", [
    ([{"question_id": 1, "answer": "yes"}], {"1": "yes"}),
    ([{"questionId": "20", "prediction": "table"}], {"20": "table"}),
    ([{"image_id": 3, "caption": "a dog"}], {"3": "a dog"}),
])
def test_json_list_formats(tmp_path: Path, rows, expected):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(rows))
    assert read_prediction_file(f) == expected


def test_jsonl_answers_and_errors(tmp_path: Path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"question_id": 1, "text": "B"}\n{"question_id": 2, "prompt": "p", "text": "C"}\n')
    assert read_prediction_file(f) == {"1": "B", "2": "C"}
    f.write_text('{"question_id": 1, "text": "B"}\n{"question_id": 1, "text": "C"}\n')
    with pytest.raises(BenchmarkFileError, match="record #1: duplicate prediction for id 1"):
        read_prediction_file(f)
    f.write_text('{"id": 1, "text": "B"}\n')
    with pytest.raises(BenchmarkFileError, match="needs an id"):
        read_prediction_file(f)


def test_torn_last_line_is_dropped_but_a_corrupt_middle_line_is_an_error(tmp_path: Path):
    f = tmp_path / "p.jsonl"
    append_records(f, [{"question_id": 1, "text": "a"}])
    with f.open("a") as h:
        h.write('{"question_id": 2, "te')
    assert list(read_done(f)) == ["1"]
    repair_tail(f)
    append_records(f, [{"question_id": 2, "text": "b"}])
    assert list(read_done(f)) == ["1", "2"]
    f.write_text('{"question_id": 1, "text": "a"}\n{broken\n{"question_id": 3, "text": "c"}\n')
    with pytest.raises(BenchmarkFileError, match="p.jsonl:2: corrupt"):
        read_done(f)
