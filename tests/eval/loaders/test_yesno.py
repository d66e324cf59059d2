"""POPE JSONL files and MME's two folder layouts."""
import json
from pathlib import Path

import pytest

from eval.loaders.yesno import load_mme, load_pope
from eval.items import SHORT_ANSWER, BenchmarkFileError


def _pope(tmp_path: Path, save_image) -> Path:
    save_image(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    for split in ("random", "popular", "adversarial"):
        rows = [{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?",
                 "label": "yes"},
                {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat in the image?",
                 "label": "no"}]
        (tmp_path / f"coco_pope_{split}.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_pope_ids_are_unique_across_splits(tmp_path: Path, save_image):
    items = load_pope(_pope(tmp_path, save_image), tmp_path / "val2014")
    assert [it.question_id for it in items][:3] == ["adversarial_1", "adversarial_2", "popular_1"]
    assert len({it.key for it in items}) == 6
    assert items[0].prompt == "Is there a dog in the image?" + SHORT_ANSWER
    assert items[1].meta == {"label": "no", "split": "adversarial"}


def test_pope_bad_line_is_named(tmp_path: Path):
    (tmp_path / "coco_pope_random.json").write_text('{"question_id": 1}\n{oops\n')
    with pytest.raises(BenchmarkFileError, match="coco_pope_random.json:2: not valid JSON"):
        load_pope(tmp_path, tmp_path, ("random",))


def test_mme_both_layouts(tmp_path: Path, save_image):
    root = tmp_path / "MME"
    save_image(root / "existence" / "1.jpg")
    (root / "existence" / "1.txt").write_text("Is there a dog? Please answer yes or no.\tYes\n"
                                              "Is there a cat? Please answer yes or no.\tNo\n")
    save_image(root / "artwork" / "images" / "9.jpg")
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    qa_file = root / "artwork" / "questions_answers_YN" / "9.txt"
    qa_file.write_text("Is this by Monet?\tNo\nIs this a painting?\tYes\n")
    items = load_mme(root)
    assert [it.key for it in items] == ["artwork/9.jpg#1", "artwork/9.jpg#2", "existence/1.jpg#1", "existence/1.jpg#2"]
    assert items[0].meta == {"answer": "No", "subtask": "artwork", "image_name": "9.jpg"}
    assert Path(items[0].image).is_file()


def test_mme_bad_line_is_named(tmp_path: Path, save_image):
    save_image(tmp_path / "count" / "1.jpg")
    (tmp_path / "count" / "1.txt").write_text("How many?\tTwo\n")
    with pytest.raises(BenchmarkFileError, match=r"1.txt:1: expected 'question<TAB>Yes\|No'"):
        load_mme(tmp_path)
