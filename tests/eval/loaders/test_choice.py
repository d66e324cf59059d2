"""ScienceQA (problems + pid_splits), MMBench TSV with base64 images (circular), SEED JSON."""
import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from eval.loaders.choice import load_mmbench, load_scienceqa, load_seed
from eval.items import CHOICE_ANSWER, BenchmarkFileError


def test_scienceqa_keeps_test_problems_with_images(tmp_path: Path, save_image, write_json):
    problems = {
        "1": {"question": "Which is a mammal?", "choices": ["shark", "whale"], "answer": 1, "hint": "",
              "image": "image.png", "split": "test"},
        "2": {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None},
        "3": {"question": "Train one", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png"},
    }
    save_image(tmp_path / "images" / "test" / "1" / "image.png")
    items = load_scienceqa(write_json(tmp_path / "problems.json", problems),
                           write_json(tmp_path / "pid_splits.json", {"test": ["1", "2"], "train": ["3"]}),
                           tmp_path / "images")
    (item,) = items
    assert item.prompt == "Which is a mammal?\nA. shark\nB. whale" + CHOICE_ANSWER
    assert item.meta == {"answer": 1, "n_choices": 2} and Path(item.image).is_file()


def test_scienceqa_unknown_split_lists_known(tmp_path: Path, write_json):
    with pytest.raises(BenchmarkFileError, match="no split 'val'"):
        load_scienceqa(write_json(tmp_path / "p.json", {}), write_json(tmp_path / "s.json", {"test": []}),
                       tmp_path, "val")


def _b64_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 255, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_mmbench_tsv_rotations(tmp_path: Path):
    tsv = tmp_path / "mmbench_dev_20230712.tsv"
    tsv.write_text("index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
                   f"11\tWhich colour?\tLook.\tred\tgreen\tblue\t\tB\tcolor\t{_b64_png()}\n")
    items = load_mmbench(tsv)
    assert [it.key for it in items] == ["11@0", "11@1", "11@2"]
    assert items[0].prompt == "Look.\nWhich colour?\nA. red\nB. green\nC. blue" + CHOICE_ANSWER
    assert [it.meta["answer"] for it in items] == ["B", "A", "C"]
    assert items[1].meta["options"] == ["green", "blue", "red"]
    assert items[0].image.size == (4, 4)


def test_mmbench_bad_image_is_named(tmp_path: Path):
    tsv = tmp_path / "m.tsv"
    tsv.write_text("index\tquestion\tA\tB\tanswer\timage\n1\tq\tx\ty\tA\tnot-base64!\n")
    with pytest.raises(BenchmarkFileError, match="m.tsv line 2: image column"):
        load_mmbench(tsv)


def test_seed_image_questions_only(tmp_path: Path, write_json):
    f = write_json(tmp_path / "SEED-Bench.json", {"question_type": {"Scene Understanding": 1}, "questions": [
        {"question_id": "101", "question": "What is shown?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "C", "data_id": "1.jpg", "data_type": "image", "question_type_id": 1},
        {"question_id": "v1", "question": "Video?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "A", "data_id": "v.mp4", "data_type": "video", "question_type_id": 10}]})
    (item,) = load_seed(f, tmp_path)
    assert item.meta["category"] == "Scene Understanding" and item.meta["answer"] == "C"
    assert item.prompt == "What is shown?\nA. a\nB. b\nC. c\nD. d" + CHOICE_ANSWER
