"""Shared fixtures for eval tests: tiny images and hand-written official-format benchmark files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image


def _save_image(path: Path, size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def vqav2_root(tmp_path: Path) -> Path:
    """Official VQAv2 val files: 3 questions on 2 COCO-named images."""
    root = tmp_path / "vqav2"
    for image_id in (42, 7):
        _save_image(root / "images" / f"COCO_val2014_{image_id:012d}.jpg")
    _write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": [
        {"question_id": 420, "image_id": 42, "question": "How many dogs?"},
        {"question_id": 421, "image_id": 42, "question": "Is it red?"},
        {"question_id": 70, "image_id": 7, "question": "What color?"},
    ]})
    def ans(xs: list[str]) -> list[dict]:
        return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(xs)]

    _write_json(root / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 420, "image_id": 42, "question_type": "how many", "answer_type": "number",
         "answers": ans(["2"] * 4 + ["3"] * 6)},
        {"question_id": 421, "image_id": 42, "question_type": "is it", "answer_type": "yes/no",
         "answers": ans(["yes"] * 10)},
        {"question_id": 70, "image_id": 7, "question_type": "what color", "answer_type": "other",
         "answers": ans(["red"] * 10)},
    ]})
    return root


@pytest.fixture
def save_image():
    """`save_image(path, size=(8, 6), color=...)` writes a solid PNG/JPEG and returns its path."""
    return _save_image


@pytest.fixture
def write_json():
    """`write_json(path, obj)` writes JSON (parents created) and returns the path."""
    return _write_json
