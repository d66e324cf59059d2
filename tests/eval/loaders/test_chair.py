"""The CHAIR loader reads COCO instance annotations: present category names per image, named errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from eval.items import BenchmarkFileError
from eval.loaders.chair import DESCRIBE_PROMPT, load_chair

INSTANCES = {
    "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
    "annotations": [{"id": 10, "image_id": 1, "category_id": 18}, {"id": 11, "image_id": 1, "category_id": 18},
                    {"id": 12, "image_id": 1, "category_id": 1}],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 18, "name": "dog", "supercategory": "animal"}],
}


def test_load_instances(tmp_path: Path, write_json, save_image) -> None:
    for name in ("a.jpg", "b.jpg"):
        save_image(tmp_path / "img" / name)
    items = load_chair(write_json(tmp_path / "instances_val2014.json", INSTANCES), tmp_path / "img")
    assert [(it.question_id, it.meta["objects"]) for it in items] == [(1, ["dog", "person"]), (2, [])]
    assert items[0].prompt == DESCRIBE_PROMPT and items[0].meta["categories"] == ["dog", "person"]


def test_unknown_category_is_named(tmp_path: Path, write_json) -> None:
    bad = {**INSTANCES, "annotations": [{"id": 3, "image_id": 1, "category_id": 99}]}
    with pytest.raises(BenchmarkFileError, match="annotation #0: category_id 99"):
        load_chair(write_json(tmp_path / "i.json", bad), tmp_path)
    with pytest.raises(BenchmarkFileError, match="missing list 'categories'"):
        load_chair(write_json(tmp_path / "j.json", {"images": [], "annotations": []}), tmp_path)
