"""`vlm data validate --model DIR`: token lengths of an anyres checkpoint, counted per image size, and reported."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from app.cli import main
from vlm.anyres_features import geometry_of


@pytest.fixture(scope="module")
def anyres_checkpoint(tiny, tmp_path_factory) -> tuple[Path, object]:
    """An anyres tiny VLM (grid (1x1),...,(3x3)) saved once for the module, and its tiling geometry."""
    model = tiny.vlm("llama", image_aspect_ratio="anyres", image_grid_pinpoints="(1x1),...,(3x3)")
    path = tmp_path_factory.mktemp("anyres_ckpt") / "ckpt"
    model.save(path)
    return path, geometry_of(model)


def test_validate_reports_tokens_per_image(anyres_checkpoint, tmp_path: Path, capsys) -> None:
    path, geo = anyres_checkpoint
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (128, 64)).save(tmp_path / "imgs" / "wide.png")
    Image.new("RGB", (32, 96)).save(tmp_path / "imgs" / "tall.png")
    records = [{"id": name, "image": f"{name}.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "a"}]}
               for name in ("wide", "tall")]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    assert main(["data", "validate", str(data), "--image-folder", str(tmp_path / "imgs"), "--model", str(path)]) == 0
    out = capsys.readouterr().out
    wide, tall = geo.num_tokens((64, 128)), geo.num_tokens((96, 32))
    assert f"image tokens per image: min {min(wide, tall)}, mean {(wide + tall) / 2:.1f}, max {max(wide, tall)} (2 images)" in out
    from conversation.records import parse_record
    from conversation.tokenize import tokenize_conversation
    from instruct_data.cli import _from_model

    tok, template, image_id, count = _from_model(path)
    small = records[0] if wide < tall else records[1]
    size = (64, 128) if small["id"] == "wide" else (96, 32)
    ids = tokenize_conversation(parse_record(small, 0), template, tok, image_token_id=image_id,
                                num_image_tokens=[count(size)]).input_ids
    limit = max(i for i, t in enumerate(ids) if t == image_id) + 2  # the smaller image fits, the bigger does not
    args = ["data", "validate", str(data), "--image-folder", str(tmp_path / "imgs"), "--model", str(path),
            "--max-length", str(limit), "--report", str(tmp_path / "r.jsonl")]
    assert main(args) == 1
    problems = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    big = "wide" if wide > tall else "tall"
    reasons = {p["record_id"]: p["reason"] for p in problems}
    assert reasons[big] == "images beyond max length"  # counted from its own size: the other one's image still fits
    assert reasons[small["id"]] != "images beyond max length"


def test_model_excludes_the_separate_token_options(anyres_checkpoint, tmp_path: Path, capsys) -> None:
    path, _ = anyres_checkpoint
    data = tmp_path / "d.json"
    data.write_text("[]")
    assert main(["data", "validate", str(data), "--image-folder", str(tmp_path), "--model", str(path),
                 "--num-image-tokens", "5"]) == 2
    assert "--model replaces" in capsys.readouterr().err
