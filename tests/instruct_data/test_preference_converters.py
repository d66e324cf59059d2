"""Tests for the preference converters (RLAIF-V, RLHF-V, VLFeedback) on tiny files in their published layouts."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from app.cli import main as vlm
from instruct_data.converters import (
    CONVERTERS,
    ConversionError,
    convert_rlaif_v,
    convert_rlhf_v,
    convert_vlfeedback,
)


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


RED, BLUE = _png((255, 0, 0)), _png((0, 0, 255))


def _rlaif_rows() -> list[dict[str, Any]]:
    base = {"ds_name": "RLAIF-V", "origin_dataset": "COCO", "origin_split": '{"model": "x"}', "image_path": "a.jpg"}
    return [
        {**base, "idx": "7", "image": {"bytes": RED, "path": "a.jpg"}, "question": "What is shown?",
         "chosen": "A red square.", "rejected": "A red square and a dog."},
        {**base, "idx": "8", "image": {"bytes": RED, "path": "a.jpg"}, "question": "Describe the image.",
         "chosen": "Red.", "rejected": "Red."},
        {**base, "idx": "9", "image": {"bytes": BLUE, "path": "b.jpg"}, "question": "<image>\nColour?",
         "chosen": "Blue.", "rejected": "Green."},
    ]


def test_rlaif_v_parquet_writes_images_and_records(tmp_path: Path) -> None:
    file = _parquet(tmp_path / "RLAIF-V-Dataset_000.parquet", _rlaif_rows())
    result = convert_rlaif_v([file], image_root=tmp_path / "img")
    assert [r["id"] for r in result.records] == ["rlaif-v-7", "rlaif-v-9"]
    assert result.dropped == {"identical chosen and rejected": 1}
    first, second = result.records
    assert first["conversations"] == [{"from": "human", "value": "<image>\nWhat is shown?"}]
    assert (first["chosen"], first["rejected"]) == ("A red square.", "A red square and a dog.")
    assert second["conversations"][0]["value"] == "<image>\nColour?"  # an existing <image> is not doubled
    # the image bytes are written once per distinct image, under the root, and named in the record
    assert first["image"].startswith("rlaif-v/") and first["image"].endswith(".png")
    assert (tmp_path / "img" / first["image"]).read_bytes() == RED
    assert (tmp_path / "img" / second["image"]).read_bytes() == BLUE
    assert len(list((tmp_path / "img" / "rlaif-v").iterdir())) == 2


def test_rlaif_v_missing_field_names_the_record(tmp_path: Path) -> None:
    rows = _rlaif_rows()
    del rows[2]["rejected"]
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "image"}) + "\n" for r in rows))
    with pytest.raises(ConversionError, match=r"line 3 \(idx '9'\): missing field 'rejected'"):
        convert_rlaif_v([file])


def test_embedded_image_needs_an_image_root(tmp_path: Path) -> None:
    file = _parquet(tmp_path / "r.parquet", _rlaif_rows()[:1])
    with pytest.raises(ConversionError, match="row 0: the image is embedded.*--image-root"):
        convert_rlaif_v([file])


def test_rlhf_v_text_field(tmp_path: Path) -> None:
    text = {"question": "What is on the table?", "chosen": "A cup.", "rejected": "A cup and a cat."}
    rows = [{"ds_name": "RLHF-V", "image": {"bytes": BLUE, "path": None}, "text": json.dumps(text),
             "origin_dataset": "x", "origin_split": "y", "idx": 3, "image_path": "z.jpg"},
            {"ds_name": "RLHF-V", "image": {"bytes": BLUE, "path": None}, "text": json.dumps({"question": "q"}),
             "origin_dataset": "x", "origin_split": "y", "idx": 4, "image_path": "z.jpg"}]
    file = _parquet(tmp_path / "RLHF-V-Dataset.parquet", rows[:1])
    (record,) = convert_rlhf_v([file], image_root=tmp_path / "img").records
    assert record == {"id": "rlhf-v-3", "image": record["image"], "chosen": "A cup.", "rejected": "A cup and a cat.",
                      "conversations": [{"from": "human", "value": "<image>\nWhat is on the table?"}]}
    assert (tmp_path / "img" / record["image"]).read_bytes() == BLUE
    bad = _parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ConversionError, match="row 1 'text': missing field 'chosen'"):
        convert_rlhf_v([bad], image_root=tmp_path / "img")


def _completion(model: str, response: str, ratings: tuple[str, str, str]) -> dict[str, Any]:
    names = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")
    return {"model": model, "response": response,
            "annotations": {n: {"Rating": r, "Rationale": "..."} for n, r in zip(names, ratings)}}


VLF_ROWS = [
    {"id": "svit-1", "prompt": "What is the man holding?", "models": ["a", "b", "c"], "img_path": "svit/1.jpg",
     "completions": [_completion("a", "An umbrella.", ("4", "3", "5")),      # mean 4
                     _completion("b", "A red umbrella.", ("5", "5", "5")),   # mean 5: chosen
                     _completion("c", "A dog and a kite.", ("2", "1", "5"))]},  # mean 8/3: rejected
    {"id": "svit-2", "prompt": "Count the cats.", "models": ["a", "b"], "img_path": "svit/2.jpg",
     "completions": [_completion("a", "Two.", ("3", "3", "3")), _completion("b", "Three.", ("3", "3", "3"))]},
]


def test_vlfeedback_highest_against_lowest(tmp_path: Path) -> None:
    file = tmp_path / "vlfeedback_80k.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in VLF_ROWS))
    result = convert_vlfeedback([file], image_prefix="merged_images/")
    (record,) = result.records
    assert record["id"] == "vlfeedback-svit-1" and record["image"] == "merged_images/svit/1.jpg"
    assert (record["chosen"], record["rejected"]) == ("A red umbrella.", "A dog and a kite.")
    assert result.dropped == {"all completions rated alike": 1}
    # by one aspect only: Visual Faithfulness ranks b (5) over c (1) as well, and a (3) in between
    by_vf = convert_vlfeedback([file], aspect="Visual Faithfulness").records[0]
    assert (by_vf["chosen"], by_vf["rejected"]) == ("A red umbrella.", "A dog and a kite.")
    by_ethics = convert_vlfeedback([file], aspect="Ethical Considerations")
    assert by_ethics.records == [] and by_ethics.dropped == {"all completions rated alike": 2}


def test_vlfeedback_arrow_layout_and_bad_rating(tmp_path: Path) -> None:
    row = dict(VLF_ROWS[0])
    comps = row.pop("completions")
    row.pop("img_path")
    row["image"] = {"bytes": RED, "path": None}
    # a parquet written by `datasets` stores a Sequence of structs as a struct of lists
    row["completions"] = {k: [c[k] for c in comps] for k in ("annotations", "model", "response")}
    file = _parquet(tmp_path / "train-00000.parquet", [row])
    (record,) = convert_vlfeedback([file], image_root=tmp_path / "img").records
    assert record["chosen"] == "A red umbrella." and (tmp_path / "img" / record["image"]).read_bytes() == RED
    bad = json.loads(json.dumps(VLF_ROWS[0]))
    bad["completions"][1]["annotations"]["Helpfulness"]["Rating"] = "N/A"
    file = tmp_path / "bad.json"
    file.write_text(json.dumps([bad]))
    with pytest.raises(ConversionError, match=r"row 0 completions\[1\]: 'Helpfulness' Rating 'N/A' is not a number"):
        convert_vlfeedback([file])


def test_cli_convert_by_exact_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"rlaif-v", "rlhf-v", "vlfeedback"} <= set(CONVERTERS)
    file = _parquet(tmp_path / "r.parquet", _rlaif_rows())
    out = tmp_path / "prefer.jsonl"
    assert vlm(["data", "convert", "rlaif-v", "--input", str(file), "--image-root", str(tmp_path / "img"),
                "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["rlaif-v-7", "rlaif-v-9"]
    assert "dropped 1 (1 identical chosen and rejected)" in capsys.readouterr().out
    assert vlm(["data", "convert", "rlaif-v", "--input", str(file), "--out", str(tmp_path / "x.json")]) == 1
