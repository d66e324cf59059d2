"""VQAv2, TextVQA, VizWiz and GQA loaders on small hand-written official-format files."""
import json
from pathlib import Path

import pytest

from eval.loaders.vqa import load_gqa, load_textvqa, load_vizwiz, load_vqav2
from eval.items import SHORT_ANSWER, VIZWIZ_ANSWER, BenchmarkFileError


def test_vqav2_official_files(vqav2_root: Path):
    items = load_vqav2(vqav2_root / "v2_OpenEnded_mscoco_val2014_questions.json",
                       vqav2_root / "v2_mscoco_val2014_annotations.json", vqav2_root / "images")
    assert [it.question_id for it in items] == [420, 421, 70]
    assert items[0].prompt == "How many dogs?" + SHORT_ANSWER
    assert Path(items[0].image).name == "COCO_val2014_000000000042.jpg"
    assert items[0].meta["answers"][:5] == ["2", "2", "2", "2", "3"]
    assert items[2].meta["answer_type"] == "other" and items[2].meta["question_type"] == "what color"


def test_vqav2_test_split_without_annotations(vqav2_root: Path):
    items = load_vqav2(vqav2_root / "v2_OpenEnded_mscoco_val2014_questions.json", None, vqav2_root / "images")
    assert "answers" not in items[0].meta


def test_vqav2_missing_image_names_question(vqav2_root: Path, tmp_path: Path):
    with pytest.raises(BenchmarkFileError, match="question #0.*image_id 42"):
        load_vqav2(vqav2_root / "v2_OpenEnded_mscoco_val2014_questions.json", None, tmp_path)


def test_vqav2_question_without_field_is_named(tmp_path: Path, write_json):
    q = write_json(tmp_path / "q.json", {"questions": [{"question_id": 1, "question": "?"}]})
    with pytest.raises(BenchmarkFileError, match=r"question #0: missing field\(s\) \['image_id'\]"):
        load_vqav2(q, None, tmp_path)


def test_image_path_escaping_root_is_refused(tmp_path: Path, save_image, write_json):
    save_image(tmp_path / "outside.png")
    rows = [{"image": "../outside.png", "question": "q", "answers": []}]
    f = write_json(tmp_path / "root" / "val.json", rows)
    with pytest.raises(BenchmarkFileError, match="escapes the image root"):
        load_vizwiz(f, tmp_path / "root")


def test_textvqa_and_vizwiz(tmp_path: Path, save_image, write_json):
    save_image(tmp_path / "train_images" / "abc.jpg")
    f = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 5, "question": "what brand?", "image_id": "abc", "answers": ["Nike"] * 10}]})
    (item,) = load_textvqa(f, tmp_path / "train_images")
    assert item.meta["answers"][0] == "Nike" and item.prompt.endswith(SHORT_ANSWER)
    save_image(tmp_path / "val" / "VizWiz_val_0001.jpg")
    f = write_json(tmp_path / "val.json", [{"image": "VizWiz_val_0001.jpg", "question": "what is it?",
                                           "answers": [{"answer": "can", "answer_confidence": "yes"}] * 10}])
    (item,) = load_vizwiz(f, tmp_path / "val")
    assert item.question_id == "VizWiz_val_0001.jpg" and item.prompt == "what is it?" + VIZWIZ_ANSWER


def test_gqa_questions_json(tmp_path: Path, save_image, write_json):
    save_image(tmp_path / "images" / "n1.jpg")
    f = write_json(tmp_path / "testdev_balanced_questions.json", {
        "201": {"imageId": "n1", "question": "Is the cup red?", "answer": "yes", "types": {"structural": "verify"}}})
    (item,) = load_gqa(f, tmp_path / "images")
    assert item.question_id == "201" and item.meta == {"answer": "yes", "type": "verify"}
    json.dumps(item.meta)


def test_textvqa_takes_llava_ocr_prompts_verbatim(tmp_path: Path, save_image, write_json):
    save_image(tmp_path / "train_images" / "abc.jpg")
    f = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 5, "question": "what brand?", "image_id": "abc", "answers": ["Nike"] * 10}]})
    text = "what brand?\nReference OCR token: NIKE, Just\nAnswer the question using a single word or phrase."
    ocr = tmp_path / "llava_textvqa_val_v051_ocr.jsonl"
    ocr.write_text(json.dumps({"question_id": 5, "image": "abc.jpg", "text": text}) + "\n")
    (item,) = load_textvqa(f, tmp_path / "train_images", ocr)
    assert item.prompt == text
    ocr.write_text(json.dumps({"question_id": 6, "text": "x"}) + "\n")
    with pytest.raises(BenchmarkFileError, match="no prompt for question_id 5"):
        load_textvqa(f, tmp_path / "train_images", ocr)
