"""COCO captions / Karpathy JSON, LLaVA question JSONL and text-only QA JSONL."""
import json
from pathlib import Path

from eval.loaders.text import load_coco_captions, load_llava_jsonl, load_text_qa
from eval.items import CAPTION_PROMPT


def test_coco_captions_annotations(tmp_path: Path, write_json):
    f = write_json(tmp_path / "captions_val2014.json", {
        "images": [{"id": 3, "file_name": "COCO_val2014_000000000003.jpg"}],
        "annotations": [{"image_id": 3, "id": 1, "caption": "A dog."}, {"image_id": 3, "id": 2, "caption": "Dog."}]})
    (item,) = load_coco_captions(f, tmp_path)
    assert item.question_id == 3 and item.prompt == CAPTION_PROMPT and item.meta["references"] == ["A dog.", "Dog."]


def test_karpathy_split(tmp_path: Path, write_json):
    f = write_json(tmp_path / "dataset_coco.json", {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "cocoid": 1, "split": "test", "sentences": [{"raw": "x"}]},
        {"filepath": "train2014", "filename": "b.jpg", "cocoid": 2, "split": "train", "sentences": [{"raw": "y"}]}]})
    (item,) = load_coco_captions(f, tmp_path, "test")
    assert item.question_id == 1 and Path(item.image).parts[-2:] == ("val2014", "a.jpg")


def test_llava_and_text_jsonl(tmp_path: Path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question_id": 0, "image": "x.jpg", "text": "Describe.", "category": "detail"}) + "\n")
    (item,) = load_llava_jsonl(f, tmp_path)
    assert item.prompt == "Describe." and item.meta["category"] == "detail"
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"question_id": "t1", "text": "What is 2+2?", "answer": "4"}) + "\n")
    (item,) = load_text_qa(f)
    assert item.image is None and item.meta == {"answer": "4"}
