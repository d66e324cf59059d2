"""Tests for instruct_data.converters: each converter on small hand-written files in the official formats."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from instruct_data.converters import (
    BRIEF_PROMPTS,
    CONVERTERS,
    ConversionError,
    convert_coco_captions,
    convert_gqa,
    convert_scienceqa,
    convert_sharegpt,
    convert_vqav2,
    get_converter,
    write_records,
)
from conversation.records import parse_record

SUFFIX = "\nAnswer the question using a single word or phrase."


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _all_parse(records: list[dict[str, Any]]) -> None:
    """The training parser accepts every converted record."""
    for i, r in enumerate(records):
        parse_record(r, i)


# ---- COCO captions ----

COCO = {
    "info": {"description": "COCO 2017 Dataset"},
    "licenses": [{"id": 1, "name": "x", "url": "y"}],
    "images": [
        {"license": 1, "file_name": "000000000009.jpg", "height": 480, "width": 640, "id": 9},
        {"license": 1, "file_name": "000000000025.jpg", "height": 426, "width": 640, "id": 25},
    ],
    "annotations": [
        {"image_id": 9, "id": 1, "caption": "A plate of food with broccoli. "},
        {"image_id": 25, "id": 2, "caption": "A giraffe eating leaves."},
        {"image_id": 9, "id": 3, "caption": "Closeup of bins of food."},
        {"image_id": 25, "id": 4, "caption": "   "},
    ],
}


def test_coco_captions_pairs(tmp_path: Path) -> None:
    result = convert_coco_captions(_write(tmp_path / "captions.json", COCO), image_prefix="coco/train2017/")
    assert [r["id"] for r in result.records] == ["9_1", "9_3", "25_2"]
    assert result.dropped == {"empty caption": 1}
    first = result.records[0]
    assert first["image"] == "coco/train2017/000000000009.jpg"
    human, gpt = first["conversations"]
    assert human["from"] == "human" and gpt == {"from": "gpt", "value": "A plate of food with broccoli."}
    prompt = human["value"].replace("<image>", "").strip()
    assert prompt in BRIEF_PROMPTS
    assert human["value"] in (f"<image>\n{prompt}", f"{prompt}\n<image>")
    _all_parse(result.records)


def test_coco_prompts_vary_and_are_deterministic_per_seed(tmp_path: Path) -> None:
    images = [{"file_name": f"{i}.jpg", "id": i} for i in range(200)]
    annotations = [{"image_id": i, "id": 1000 + i, "caption": f"caption {i}"} for i in range(200)]
    path = _write(tmp_path / "c.json", {"images": images, "annotations": annotations})
    a = convert_coco_captions(path, seed=3).records
    b = convert_coco_captions(path, seed=3).records
    c = convert_coco_captions(path, seed=4).records
    assert a == b and a != c
    humans = [r["conversations"][0]["value"] for r in a]
    assert len({h.replace("<image>", "").strip() for h in humans}) == len(BRIEF_PROMPTS)
    before = sum(h.startswith("<image>") for h in humans)
    assert 60 < before < 140  # both placements occur, about evenly
    # a record's prompt depends on its id and the seed, not on its position in the file
    reversed_path = _write(tmp_path / "r.json", {"images": images, "annotations": annotations[::-1]})
    by_id = {r["id"]: r for r in convert_coco_captions(reversed_path, seed=3).records}
    assert all(by_id[r["id"]] == r for r in a)


def test_coco_one_per_image(tmp_path: Path) -> None:
    path = _write(tmp_path / "captions.json", COCO)
    first = convert_coco_captions(path, per_image="first").records
    assert [(r["id"], r["conversations"][1]["value"]) for r in first] == [
        ("9", "A plate of food with broccoli."), ("25", "A giraffe eating leaves.")]
    rand = convert_coco_captions(path, per_image="random", seed=1).records
    assert [r["id"] for r in rand] == ["9", "25"]
    assert rand[0]["conversations"][1]["value"] in ("A plate of food with broccoli.", "Closeup of bins of food.")


def test_coco_bad_input_named(tmp_path: Path) -> None:
    bad = {"images": [{"file_name": "a.jpg", "id": 1}], "annotations": [{"image_id": 2, "id": 1, "caption": "x"}]}
    with pytest.raises(ConversionError, match=r"annotations\[0\]: image_id 2 is not in 'images'"):
        convert_coco_captions(_write(tmp_path / "c.json", bad))
    with pytest.raises(ConversionError, match="missing key 'annotations'"):
        convert_coco_captions(_write(tmp_path / "d.json", {"images": []}))
    (tmp_path / "e.json").write_text("{not json")
    with pytest.raises(ConversionError, match="e.json: not valid JSON at line 1"):
        convert_coco_captions(tmp_path / "e.json")


# ---- VQAv2 ----

def _answers(word: str) -> list[dict[str, Any]]:
    return [{"answer": word, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]


VQA_QUESTIONS = {
    "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "train2014",
    "questions": [
        {"image_id": 458752, "question": "What is this photo taken looking through?", "question_id": 458752000},
        {"image_id": 262146, "question": "What color is the snow?", "question_id": 262146000},
        {"image_id": 458752, "question": "What position is this man playing?", "question_id": 458752001},
        {"image_id": 458752, "question": "Is this man a professional?", "question_id": 458752002},
    ],
}
VQA_ANNOTATIONS = {
    "info": {}, "license": {}, "data_subtype": "train2014", "data_type": "mscoco",
    "annotations": [
        {"question_type": "what is this", "multiple_choice_answer": "net", "answers": _answers("net"),
         "image_id": 458752, "answer_type": "other", "question_id": 458752000},
        {"question_type": "what color is the", "multiple_choice_answer": "white", "answers": _answers("white"),
         "image_id": 262146, "answer_type": "other", "question_id": 262146000},
        {"question_type": "what", "multiple_choice_answer": "pitcher", "answers": _answers("pitcher"),
         "image_id": 458752, "answer_type": "other", "question_id": 458752001},
        {"question_type": "is this", "multiple_choice_answer": "yes", "answers": _answers("yes"),
         "image_id": 458752, "answer_type": "yes/no", "question_id": 458752002},
    ],
}


def test_vqav2_grouped_by_image(tmp_path: Path) -> None:
    q = _write(tmp_path / "q.json", VQA_QUESTIONS)
    a = _write(tmp_path / "a.json", VQA_ANNOTATIONS)
    records = convert_vqav2(q, a).records
    assert [r["id"] for r in records] == ["458752", "262146"]
    assert records[0]["image"] == "coco/train2014/COCO_train2014_000000458752.jpg"
    assert records[0]["conversations"] == [
        {"from": "human", "value": "<image>\nWhat is this photo taken looking through?" + SUFFIX},
        {"from": "gpt", "value": "net"},
        {"from": "human", "value": "What position is this man playing?" + SUFFIX},
        {"from": "gpt", "value": "pitcher"},
        {"from": "human", "value": "Is this man a professional?" + SUFFIX},
        {"from": "gpt", "value": "yes"},
    ]
    _all_parse(records)


def test_vqav2_pattern_and_max_turns(tmp_path: Path) -> None:
    q = _write(tmp_path / "q.json", VQA_QUESTIONS)
    a = _write(tmp_path / "a.json", VQA_ANNOTATIONS)
    records = convert_vqav2(q, a, image_pattern="vqa/{image_id}.png", max_turns=2).records
    assert [(r["id"], len(r["conversations"])) for r in records] == [("458752_0", 4), ("458752_1", 2), ("262146", 2)]
    assert records[1]["image"] == "vqa/458752.png"
    assert records[1]["conversations"][0]["value"].startswith("<image>\nIs this man")
    _all_parse(records)
    with pytest.raises(ValueError, match="image pattern .* cannot be filled"):
        convert_vqav2(q, a, image_pattern="{imageid}.jpg")


def test_vqav2_mismatched_files_named(tmp_path: Path) -> None:
    q = _write(tmp_path / "q.json", VQA_QUESTIONS)
    partial = dict(VQA_ANNOTATIONS, annotations=VQA_ANNOTATIONS["annotations"][:2])
    with pytest.raises(ConversionError, match=r"question_id 458752001 has no annotation \(2 of 4"):
        convert_vqav2(q, _write(tmp_path / "a.json", partial))
    wrong = json.loads(json.dumps(VQA_ANNOTATIONS))
    wrong["annotations"][1]["image_id"] = 7
    with pytest.raises(ConversionError, match="annotation image_id 7 != question image_id 262146"):
        convert_vqav2(q, _write(tmp_path / "b.json", wrong))


# ---- GQA ----

GQA = {
    "02930152": {"semantic": [], "entailed": [], "equivalent": ["02930152"], "question": "Is the sky dark?",
                 "imageId": "2354786", "isBalanced": True, "groups": {"global": None, "local": "06-sky_dark"},
                 "answer": "yes", "semanticStr": "select: sky->verify color: dark", "annotations": {},
                 "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
                 "fullAnswer": "Yes, the sky is dark."},
    "07333408": {"question": "What is on the white wall?", "imageId": "2375429", "answer": "pipe",
                 "fullAnswer": "The pipe is on the wall.", "isBalanced": True},
    "07333405": {"question": "Is that pipe red?", "imageId": "2375429", "answer": "no",
                 "fullAnswer": "No, the pipe is white.", "isBalanced": True},
}


def test_gqa_grouped_by_image(tmp_path: Path) -> None:
    records = convert_gqa(_write(tmp_path / "q.json", GQA)).records
    assert [r["id"] for r in records] == ["2354786", "2375429"]
    assert records[1]["image"] == "gqa/images/2375429.jpg"
    assert records[1]["conversations"] == [
        {"from": "human", "value": "<image>\nWhat is on the white wall?" + SUFFIX},
        {"from": "gpt", "value": "pipe"},
        {"from": "human", "value": "Is that pipe red?" + SUFFIX},
        {"from": "gpt", "value": "no"},
    ]
    _all_parse(records)


def test_gqa_errors(tmp_path: Path) -> None:
    no_answer = {"201307251": {"question": "Is it?", "imageId": "n1"}}
    with pytest.raises(ConversionError, match="question 201307251: no 'answer'"):
        convert_gqa(_write(tmp_path / "t.json", no_answer))
    with pytest.raises(ConversionError, match="expected an object keyed by question id"):
        convert_gqa(_write(tmp_path / "l.json", [GQA["02930152"]]))
    with pytest.raises(ConversionError, match="'imageId' should be str"):
        convert_gqa(_write(tmp_path / "i.json", {"1": {"question": "q", "imageId": 5, "answer": "a"}}))


# ---- ShareGPT ----

def _conv(cid: str, *turns: tuple[str, str]) -> dict[str, Any]:
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def test_sharegpt_roles_mapped_and_bad_dropped(tmp_path: Path) -> None:
    data = [
        _conv("ok", ("human", "Hi"), ("gpt", "Hello")),
        _conv("mapped", ("user", "Q1"), ("chatgpt", "A1"), ("human", "Q2"), ("bing", "A2"), ("user", "Q3"), ("bard", "A3")),
        _conv("assistant", ("user", "Q"), ("assistant", "A"), ("human", "unanswered")),
        _conv("empty"),
        _conv("empty_turn", ("human", "Q"), ("gpt", " ")),
        _conv("gpt_first", ("gpt", "A"), ("human", "Q")),
        _conv("twice", ("human", "Q"), ("human", "Q again"), ("gpt", "A")),
        _conv("system", ("system", "be nice"), ("human", "Q"), ("gpt", "A")),
        _conv("image", ("human", "what is <image>?"), ("gpt", "a tag")),
        {"id": "nothing"},
    ]
    result = convert_sharegpt(_write(tmp_path / "sg.json", data))
    assert [r["id"] for r in result.records] == ["ok", "mapped", "assistant"]
    assert result.records[1]["conversations"] == [
        {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"},
        {"from": "gpt", "value": "A2"}, {"from": "human", "value": "Q3"}, {"from": "gpt", "value": "A3"}]
    assert len(result.records[2]["conversations"]) == 2  # the unanswered last question is trimmed
    assert all("image" not in r for r in result.records)
    assert result.dropped == {"empty conversation": 1, "empty turn": 1, "mis-ordered roles": 2, "unknown role": 1,
                              "text contains <image>": 1, "no conversations list": 1}
    assert "3 records; dropped 7" in result.summary()
    _all_parse(result.records)


# ---- ScienceQA ----

SQA_PROBLEMS = {
    "1": {"question": "Which figure of speech is used in this text?", "choices": ["chiasmus", "apostrophe"],
          "answer": 1, "hint": "Sing, O goddess, the anger of Achilles.", "image": None, "task": "closed choice",
          "grade": "grade11", "subject": "language science", "topic": "figurative-language",
          "category": "Literary devices", "skill": "Classify the figure of speech", "lecture": "...",
          "solution": "...", "split": "train"},
    "5": {"question": "Which of these states is farthest north?", "choices": ["West Virginia", "Louisiana",
          "Arizona", "Oklahoma"], "answer": 0, "hint": "", "image": "image.png", "task": "closed choice",
          "grade": "grade2", "subject": "social science", "topic": "geography", "category": "Geography",
          "skill": "Read a map", "lecture": "...", "solution": "...", "split": "train"},
    "9": {"question": "Test question?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None, "split": "test"},
}
SQA_SPLITS = {"train": ["1", "5"], "val": [], "test": ["9"], "minitrain": ["1"]}


def test_scienceqa_records(tmp_path: Path) -> None:
    p = _write(tmp_path / "problems.json", SQA_PROBLEMS)
    s = _write(tmp_path / "pid_splits.json", SQA_SPLITS)
    records = convert_scienceqa(p, s, split="train", image_prefix="scienceqa/").records
    assert records[0] == {"id": "1", "conversations": [
        {"from": "human", "value": "Context: Sing, O goddess, the anger of Achilles.\n"
                                   "Question: Which figure of speech is used in this text?\n"
                                   "Options: A. chiasmus\nB. apostrophe\n"
                                   "Answer with the option's letter from the given choices directly."},
        {"from": "gpt", "value": "B"}]}
    assert records[1]["image"] == "scienceqa/train/5/image.png"
    assert records[1]["conversations"][0]["value"] == (
        "<image>\nQuestion: Which of these states is farthest north?\n"
        "Options: A. West Virginia\nB. Louisiana\nC. Arizona\nD. Oklahoma\n"
        "Answer with the option's letter from the given choices directly.")
    assert records[1]["conversations"][1]["value"] == "A"
    _all_parse(records)
    plain = convert_scienceqa(p, s, split="minitrain", use_context=False).records
    assert plain[0]["conversations"][0]["value"].startswith("Question: Which figure")


def test_scienceqa_errors(tmp_path: Path) -> None:
    p = _write(tmp_path / "problems.json", SQA_PROBLEMS)
    s = _write(tmp_path / "pid_splits.json", SQA_SPLITS)
    with pytest.raises(ConversionError, match="no split 'dev' \\(known: minitrain, test, train, val\\)"):
        convert_scienceqa(p, s, split="dev")
    bad = json.loads(json.dumps(SQA_PROBLEMS))
    bad["1"]["answer"] = 2
    with pytest.raises(ConversionError, match="problem 1: answer index 2 outside 2 choices"):
        convert_scienceqa(_write(tmp_path / "bad.json", bad), s)
    with pytest.raises(ConversionError, match="problem 7 .* is missing"):
        convert_scienceqa(p, _write(tmp_path / "s2.json", {"train": ["7"]}))


# ---- registry and writing ----

def test_registry_exact_names() -> None:
    assert list(CONVERTERS) == ["coco-captions", "vqav2", "gqa", "sharegpt", "scienceqa", "rlaif-v", "rlhf-v", "vlfeedback"]
    assert get_converter("gqa").name == "gqa"
    with pytest.raises(ValueError, match="unknown converter 'vqa'"):
        get_converter("vqa")  # a prefix of vqav2 is not a match


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_write_records_round_trip(tmp_path: Path, suffix: str) -> None:
    records = [{"id": str(i), "conversations": [{"from": "human", "value": f"é {i}"}]} for i in range(3)]
    out = tmp_path / "sub" / f"out{suffix}"
    assert write_records(iter(records), out) == 3
    text = out.read_text(encoding="utf-8")
    back = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    assert back == records
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left
    assert write_records([], tmp_path / "empty.json") == 0 and json.loads((tmp_path / "empty.json").read_text()) == []
    with pytest.raises(ValueError, match="use a .json"):
        write_records(records, tmp_path / "out.txt")


def test_write_records_failure_leaves_no_file(tmp_path: Path) -> None:
    def records() -> Any:
        yield {"id": "1"}
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_records(records(), tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []
