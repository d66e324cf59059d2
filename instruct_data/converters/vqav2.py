"""VQAv2 questions + annotations (official JSON) -> multi-turn short-answer records grouped by image."""
from __future__ import annotations

import argparse
from pathlib import Path

from instruct_data.converters.common import (
    ConversionError,
    ConversionResult,
    format_image_path,
    load_json,
    require,
)
from instruct_data.converters.vqa_grouping import QAItem, group_by_image

# Fields: image_id, and subtype (the questions file's data_subtype, e.g. train2014).
DEFAULT_IMAGE_PATTERN = "coco/{subtype}/COCO_{subtype}_{image_id:012d}.jpg"


def convert_vqav2(
    questions_file: str | Path,
    annotations_file: str | Path,
    *,
    image_pattern: str = DEFAULT_IMAGE_PATTERN,
    max_turns: int = 0,
) -> ConversionResult:
    """Each question + the short-answer suffix, answered with its `multiple_choice_answer`."""
    questions_doc = load_json(questions_file, "VQAv2 questions JSON with a 'questions' list")
    annotations_doc = load_json(annotations_file, "VQAv2 annotations JSON with an 'annotations' list")
    questions = require(questions_doc, "questions", list, questions_file, "top level")
    annotations = require(annotations_doc, "annotations", list, annotations_file, "top level")
    subtype = questions_doc.get("data_subtype", "train2014")

    answers: dict[int, tuple[int, str]] = {}
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        qid = require(ann, "question_id", int, annotations_file, where)
        image_id = require(ann, "image_id", int, annotations_file, where)
        answers[qid] = (image_id, require(ann, "multiple_choice_answer", str, annotations_file, where))

    result = ConversionResult(records=[])
    items: list[QAItem] = []
    for i, q in enumerate(questions):
        where = f"questions[{i}]"
        qid = require(q, "question_id", int, questions_file, where)
        image_id = require(q, "image_id", int, questions_file, where)
        question = require(q, "question", str, questions_file, where)
        if qid not in answers:
            missing = sum(1 for x in questions if isinstance(x, dict) and x.get("question_id") not in answers)
            raise ConversionError(annotations_file, f"question_id {qid} has no annotation ({missing} of "
                                                    f"{len(questions)} questions lack one): are both files "
                                                    "from the same split?")
        ann_image, answer = answers[qid]
        if ann_image != image_id:
            raise ConversionError(annotations_file, f"question_id {qid}: annotation image_id {ann_image} != "
                                                    f"question image_id {image_id}")
        if not question.strip() or not answer.strip():
            result.drop("empty question or answer")
            continue
        items.append(QAItem(image_id, question, answer))

    def image_path(image_id: object) -> str:
        return format_image_path(image_pattern, image_id=image_id, subtype=subtype)

    result.records = group_by_image(items, image_path, max_turns=max_turns)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, type=Path, help="v2_OpenEnded_mscoco_*_questions.json")
    parser.add_argument("--annotations", required=True, type=Path, help="v2_mscoco_*_annotations.json")
    parser.add_argument("--image-pattern", default=DEFAULT_IMAGE_PATTERN,
                        help="image path, a str.format pattern with {image_id} and {subtype} "
                             f"(default {DEFAULT_IMAGE_PATTERN})")
    parser.add_argument("--max-turns", type=int, default=0,
                        help="at most this many questions per record (0: all of an image's questions in one)")


def run(args: argparse.Namespace) -> ConversionResult:
    return convert_vqav2(args.questions, args.annotations, image_pattern=args.image_pattern,
                         max_turns=args.max_turns)
