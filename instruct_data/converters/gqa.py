"""GQA questions (official JSON, a dict keyed by question id) -> multi-turn short-answer records by image."""
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

DEFAULT_IMAGE_PATTERN = "gqa/images/{image_id}.jpg"


def convert_gqa(questions_file: str | Path, *, image_pattern: str = DEFAULT_IMAGE_PATTERN,
                max_turns: int = 0) -> ConversionResult:
    """Each question + the short-answer suffix, answered with its short `answer` (not `fullAnswer`)."""
    doc = load_json(questions_file, "GQA questions JSON: an object keyed by question id")
    if not isinstance(doc, dict):
        raise ConversionError(questions_file, f"expected an object keyed by question id, got {type(doc).__name__}")
    result = ConversionResult(records=[])
    items: list[QAItem] = []
    for qid, q in doc.items():
        where = f"question {qid}"
        image_id = require(q, "imageId", str, questions_file, where)
        question = require(q, "question", str, questions_file, where)
        if "answer" not in q:
            raise ConversionError(questions_file, f"{where}: no 'answer' (test-split questions cannot be converted "
                                                  "to training records)")
        answer = require(q, "answer", str, questions_file, where)
        if not question.strip() or not answer.strip():
            result.drop("empty question or answer")
            continue
        items.append(QAItem(image_id, question, answer))
    result.records = group_by_image(items, lambda image_id: format_image_path(image_pattern, image_id=image_id),
                                    max_turns=max_turns)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, type=Path, help="GQA *_questions.json")
    parser.add_argument("--image-pattern", default=DEFAULT_IMAGE_PATTERN,
                        help=f"image path, a str.format pattern with {{image_id}} (default {DEFAULT_IMAGE_PATTERN})")
    parser.add_argument("--max-turns", type=int, default=0,
                        help="at most this many questions per record (0: all of an image's questions in one)")


def run(args: argparse.Namespace) -> ConversionResult:
    return convert_gqa(args.questions, image_pattern=args.image_pattern, max_turns=args.max_turns)
