"""VQAv2 (official questions + annotations), TextVQA and VizWiz JSON loaders."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.items import (
    SHORT_ANSWER,
    VIZWIZ_ANSWER,
    BenchmarkFileError,
    EvalItem,
    confined,
    first_existing,
    read_json,
    read_jsonl,
    require,
)


def _image_namer(image_root: Path, split: str, first_id: int, where: str) -> str:
    """Find which file naming the images use (COCO's, zero-padded, plain) from the first question."""
    patterns = [f"COCO_{split}_{{:012d}}.jpg", f"{split}/COCO_{split}_{{:012d}}.jpg", "{:012d}.jpg",
                "{:06d}.png", "{}.jpg", "{}.png", f"{split}/{{:06d}}.png",
                "test/{:06d}.png"]
    for pattern in patterns:
        if confined(image_root, pattern.format(first_id)).is_file():
            return pattern
    raise BenchmarkFileError(f"{where}: no image for image_id {first_id} under {image_root} "
                             f"(tried {[p.format(first_id) for p in patterns]})")


def load_vqav2(questions_file: Path, annotations_file: Path | None, image_root: Path,
               split: str = "val2014") -> list[EvalItem]:
    """Official VQAv2 files; without annotations (test-dev) items carry no answers (submission only)."""
    questions = read_json(questions_file)
    if not isinstance(questions, dict) or "questions" not in questions:
        raise BenchmarkFileError(f"{questions_file}: expected an object with a 'questions' list")
    gold: dict[Any, dict[str, Any]] = {}
    if annotations_file is not None:
        ann = read_json(annotations_file)
        if not isinstance(ann, dict) or "annotations" not in ann:
            raise BenchmarkFileError(f"{annotations_file}: expected an object with an 'annotations' list")
        for i, a in enumerate(ann["annotations"]):
            require(a, ("question_id", "answers"), f"{annotations_file} annotation #{i}")
            gold[a["question_id"]] = a
    items: list[EvalItem] = []
    pattern: str | None = None
    for i, q in enumerate(questions["questions"]):
        where = f"{questions_file} question #{i}"
        require(q, ("question_id", "image_id", "question"), where)
        if "image" in q:  # some converted files name the image directly
            image = confined(image_root, q["image"])
        else:
            pattern = pattern or _image_namer(image_root, split, q["image_id"], where)
            image = confined(image_root, pattern.format(q["image_id"]))
        meta: dict[str, Any] = {"image_id": q["image_id"], "question": q["question"]}
        if annotations_file is not None:
            a = gold.get(q["question_id"])
            if a is None:
                raise BenchmarkFileError(f"{annotations_file}: no annotation for question_id {q['question_id']}")
            meta.update(answers=[x["answer"] for x in a["answers"]], answer_type=a.get("answer_type", ""),
                        question_type=a.get("question_type", q.get("question_type", "")))
        items.append(EvalItem(q["question_id"], image, q["question"] + SHORT_ANSWER, meta))
    return items


def load_textvqa(file: Path, image_root: Path, llava_prompts: Path | None = None) -> list[EvalItem]:
    """TextVQA `TextVQA_0.5.1_{split}.json` (`data` list); images `{image_id}.jpg`.

    With `llava_prompts` (LLaVA's `llava_textvqa_val_v051_ocr.jsonl`), each prompt is taken verbatim from it
    (question + `Reference OCR token: ...` + suffix), as LLaVA-1.5's reported number used.
    """
    prompts: dict[str, str] = {}
    if llava_prompts is not None:
        for n, row in enumerate(read_jsonl(llava_prompts), start=1):
            require(row, ("question_id", "text"), f"{llava_prompts} line {n}")
            prompts[str(row["question_id"])] = row["text"]
    raw = read_json(file)
    rows = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(rows, list):
        raise BenchmarkFileError(f"{file}: expected an object with a 'data' list")
    items = []
    for i, r in enumerate(rows):
        where = f"{file} record #{i}"
        require(r, ("question_id", "question", "image_id"), where)
        image = first_existing(image_root, [f"{r['image_id']}.jpg", f"{r['image_id']}.png"], where)
        meta = {"answers": r.get("answers"), "question": r["question"]}
        prompt = prompts.get(str(r["question_id"]), r["question"] + SHORT_ANSWER)
        if prompts and str(r["question_id"]) not in prompts:
            raise BenchmarkFileError(f"{llava_prompts}: no prompt for question_id {r['question_id']}")
        items.append(EvalItem(r["question_id"], image, prompt, meta))
    return items


def load_vizwiz(file: Path, image_root: Path) -> list[EvalItem]:
    """VizWiz `val.json` / `test.json` (a list); the question id is the image file name, as LLaVA uses."""
    rows = read_json(file)
    if not isinstance(rows, list):
        raise BenchmarkFileError(f"{file}: expected a JSON list of questions")
    items = []
    for i, r in enumerate(rows):
        require(r, ("image", "question"), f"{file} record #{i}")
        answers = [a["answer"] for a in r["answers"]] if "answers" in r else None
        items.append(EvalItem(r["image"], confined(image_root, r["image"]), r["question"] + VIZWIZ_ANSWER,
                              {"answers": answers, "question": r["question"]}))
    return items


def load_gqa(file: Path, image_root: Path) -> list[EvalItem]:
    """GQA `{split}_balanced_questions.json` (an object keyed by question id); images `{imageId}.jpg`."""
    raw = read_json(file)
    if not isinstance(raw, dict):
        raise BenchmarkFileError(f"{file}: expected an object keyed by question id")
    items = []
    for qid, r in raw.items():
        where = f"{file} question {qid}"
        require(r, ("imageId", "question"), where)
        image = first_existing(image_root, [f"{r['imageId']}.jpg", f"{r['imageId']}.png"], where)
        meta = {"answer": r.get("answer"), "type": (r.get("types") or {}).get("structural", "")}
        items.append(EvalItem(qid, image, r["question"] + SHORT_ANSWER, meta))
    return items
