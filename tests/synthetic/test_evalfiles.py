"""Eval files follow the official formats (VQAv2, POPE, COCO captions, ScienceQA) plus text-only Q&A."""
import json
from collections import Counter
from pathlib import Path

from PIL import Image


def test_vqav2_official_keys_ten_answers_and_splits(synth_world: Path) -> None:
    ev = synth_world / "eval" / "vqav2"
    questions = json.loads((ev / "questions.json").read_text())
    annotations = json.loads((ev / "annotations.json").read_text())
    splits = json.loads((ev / "splits.json").read_text())
    assert {"info", "task_type", "data_type", "data_subtype", "license", "questions"} <= set(questions)
    assert {"info", "data_type", "data_subtype", "license", "annotations"} <= set(annotations)
    qids = [q["question_id"] for q in questions["questions"]]
    assert len(set(qids)) == len(qids) == len(annotations["annotations"]) == len(splits)
    for q in questions["questions"]:
        assert set(q) >= {"image_id", "question", "question_id"}
        assert (synth_world / "images" / "test" / q["image"]).is_file()
    for a in annotations["annotations"]:
        assert set(a) >= {"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer", "answers"}
        assert len(a["answers"]) == 10 and a["answer_type"] in ("yes/no", "number", "other")
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        # the canonical answer always has a clear majority, so the official scorer gives it 100
        assert sum(x["answer"] == a["multiple_choice_answer"] for x in a["answers"]) >= 7
    assert set(splits.values()) == {"seen", "heldout"}
    variants = {x["answer"] for a in annotations["annotations"] if a["answer_type"] == "number" for x in a["answers"]}
    assert variants & {"one", "two", "three", "four"} and variants & {"1", "2", "3", "4"}


def test_pope_jsonl_is_balanced_per_split(synth_world: Path) -> None:
    for split in ("random", "popular", "adversarial"):
        rows = [json.loads(line) for line in (synth_world / "eval" / "pope" / f"coco_pope_{split}.json").read_text().splitlines()]
        assert rows and all(set(r) == {"question_id", "image", "text", "label"} for r in rows)
        labels = Counter(r["label"] for r in rows)
        assert labels["yes"] == labels["no"] and set(labels) == {"yes", "no"}
        assert all(r["text"].startswith("Is there a ") and r["text"].endswith(" in the image?") for r in rows)


def test_adversarial_pope_negatives_share_an_attribute_with_the_image(synth_world: Path) -> None:
    scenes = {f"{s['id']:06d}.png": s["objects"] for s in json.loads((synth_world / "scenes" / "test.json").read_text())}
    for line in (synth_world / "eval" / "pope" / "coco_pope_adversarial.json").read_text().splitlines():
        row = json.loads(line)
        if row["label"] == "no":
            colour, shape = row["text"].removeprefix("Is there a ").removesuffix(" in the image?").split()
            assert any(o["colour"] == colour or o["shape"] == shape for o in scenes[row["image"]])


def test_coco_captions_have_five_references_per_image(synth_world: Path) -> None:
    coco = json.loads((synth_world / "eval" / "coco" / "captions_test.json").read_text())
    assert {"images", "annotations"} <= set(coco)
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert set(per_image.values()) == {5} and set(per_image) == {im["id"] for im in coco["images"]}
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert all((synth_world / "images" / "test" / im["file_name"]).is_file() for im in coco["images"])


def test_scienceqa_problems_and_splits(synth_world: Path) -> None:
    sqa = synth_world / "eval" / "scienceqa"
    problems = json.loads((sqa / "problems.json").read_text())
    splits = json.loads((sqa / "pid_splits.json").read_text())
    assert sorted(splits["test"]) == sorted(problems)
    with_image = 0
    for pid, p in problems.items():
        assert {"question", "choices", "answer", "hint", "image", "split"} <= set(p)
        assert 0 <= p["answer"] < len(p["choices"]) and p["split"] == "test"
        if p["image"]:
            with Image.open(sqa / "images" / "test" / pid / p["image"]) as img:
                assert img.size == (72, 72)  # the default image size
            with_image += 1
    assert with_image == 10 and len(problems) == 13


def test_text_questions(synth_world: Path) -> None:
    rows = [json.loads(line) for line in (synth_world / "eval" / "text" / "questions.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and len({r["question_id"] for r in rows}) == 20
    for r in rows:
        assert {"question_id", "text", "answer"} <= set(r) and r["answer"]
        if r["text"].startswith("What is ") and " plus " in r["text"]:
            a, b = r["text"].split("?")[0].removeprefix("What is ").split(" plus ")
            assert int(r["answer"]) == int(a) + int(b)
