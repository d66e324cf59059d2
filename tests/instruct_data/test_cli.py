"""Tests for `vlm data validate|convert` through the real `vlm` entry point."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.cli import main as vlm_main


def _noise(path: Path) -> None:
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)


def _clean_world(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    (root / "coco").mkdir(parents=True)
    _noise(root / "coco" / "1.jpg")
    records = [
        {"id": "a", "image": "coco/1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "Noise."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "c", "images": ["coco/1.jpg", "coco/1.jpg"], "messages": [
            {"role": "user", "content": "<image><image> Same?"}, {"role": "assistant", "content": "Yes."}]},
    ]
    path = tmp_path / "clean.json"
    path.write_text(json.dumps(records, indent=1))
    return path, root


def test_validate_clean_file_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, root = _clean_world(tmp_path)
    report = tmp_path / "out" / "problems.jsonl"
    assert vlm_main(["data", "validate", str(path), "--image-folder", str(root), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "records" in out and "bad" in out and "bad records by reason" not in out
    assert report.read_text() == ""


def test_validate_bad_file_exits_nonzero_with_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, root = _clean_world(tmp_path)
    lines = [json.dumps(r) for r in json.loads(path.read_text())]
    lines.append('{"id": "x", "image": "../clean.json", "conversations": [')
    lines.append(json.dumps({"id": "y", "image": "coco/2.jpg", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    report = tmp_path / "problems.jsonl"
    assert vlm_main(["data", "validate", str(bad), "--image-folder", str(root), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "malformed json" in out and "missing file" in out
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(r["record_id"], r["reason"], r["line"]) for r in rows] == [("line 4", "malformed json", 4),
                                                                        ("y", "missing file", 5)]


def test_validate_second_image_folder(tmp_path: Path) -> None:
    path, root = _clean_world(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _noise(other / "extra.jpg")
    rec = {"id": "e", "image": "extra.jpg", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    (tmp_path / "e.jsonl").write_text(json.dumps(rec) + "\n")
    args = ["data", "validate", str(tmp_path / "e.jsonl"), "--image-folder", str(root)]
    assert vlm_main(args) == 1
    assert vlm_main(args + ["--image-folder", str(other)]) == 0


def test_validate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, root = _clean_world(tmp_path)
    assert vlm_main(["data", "validate", str(tmp_path / "nope.json"), "--image-folder", str(root)]) == 2
    assert vlm_main(["data", "validate", str(path), "--image-folder", str(tmp_path / "nodir")]) == 2
    assert vlm_main(["data", "validate", str(path), "--image-folder", str(root), "--tokenizer", "x"]) == 2
    assert "together" in capsys.readouterr().err
    assert vlm_main(["data", "validate", str(path), "--image-folder", str(root), "--max-length", "9"]) == 2


@pytest.mark.slow  # importing transformers' AutoTokenizer alone takes seconds on a loaded CPU
def test_validate_with_tokenizer(tmp_path: Path, bpe_tokenizer: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, root = _clean_world(tmp_path)
    bpe_tokenizer.save_pretrained(tmp_path / "tok")
    base = ["data", "validate", str(path), "--image-folder", str(root), "--tokenizer", str(tmp_path / "tok"),
            "--template", "vicuna_v1", "--num-image-tokens", "4"]
    assert vlm_main(base + ["--max-length", "4096"]) == 0
    capsys.readouterr()
    # 8 image tokens of record c cannot fit in 10 tokens after the system prompt; a, b get cut too
    assert vlm_main(base + ["--max-length", "10", "--report", str(tmp_path / "p.jsonl")]) == 1
    rows = {r["record_id"]: r["reason"] for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    assert rows == {"a": "images beyond max length", "b": "no supervised token within max length",
                    "c": "images beyond max length"}
    assert vlm_main(base[:-4] + ["--template", "vicuna", "--num-image-tokens", "4"]) == 2
    assert "unknown template 'vicuna'" in capsys.readouterr().err


def test_convert_writes_llava_json_that_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captions = {"images": [{"file_name": "1.jpg", "id": 1}],
                "annotations": [{"image_id": 1, "id": 5, "caption": "Static."}, {"image_id": 1, "id": 6, "caption": ""}]}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    out = tmp_path / "align.json"
    assert vlm_main(["data", "convert", "coco-captions", "--captions", str(tmp_path / "captions.json"),
                     "--image-prefix", "coco/", "--seed", "1", "--out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert "wrote 1 records" in out_text and "dropped 1 (1 empty caption)" in out_text
    [record] = json.loads(out.read_text())
    assert record["id"] == "1_5" and record["image"] == "coco/1.jpg"
    _, root = _clean_world(tmp_path)
    assert vlm_main(["data", "validate", str(out), "--image-folder", str(root)]) == 0


def test_convert_errors_exit_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "q.json").write_text(json.dumps({"questions": [{"image_id": 1, "question": "Q?", "question_id": 10}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": []}))
    args = ["data", "convert", "vqav2", "--questions", str(tmp_path / "q.json"), "--annotations",
            str(tmp_path / "a.json"), "--out", str(tmp_path / "o.json")]
    assert vlm_main(args) == 1
    assert "question_id 10 has no annotation" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    (tmp_path / "sg.json").write_text(json.dumps([{"id": "1", "conversations": []}]))
    assert vlm_main(["data", "convert", "sharegpt", "--input", str(tmp_path / "sg.json"),
                     "--out", str(tmp_path / "o.json")]) == 1
    assert "no records produced" in capsys.readouterr().err


def test_unknown_converter_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        vlm_main(["data", "convert", "vqa", "--out", "x.json"])
    assert exc.value.code == 2
