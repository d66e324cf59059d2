"""ScienceQA `problems.json` + `pid_splits.json` -> multiple-choice records answered by the option letter."""
from __future__ import annotations

import argparse
import string
from pathlib import Path
from typing import Any

from instruct_data.converters.common import (
    IMAGE_TOKEN,
    LETTER_ANSWER_SUFFIX,
    ConversionError,
    ConversionResult,
    load_json,
    require,
    turn,
)


def format_question(question: str, choices: list[str], hint: str = "") -> str:
    """`[Context: hint\\n]Question: q\\nOptions: A. x\\nB. y ...` + the letter-answer instruction."""
    if len(choices) > len(string.ascii_uppercase):
        raise ValueError(f"{len(choices)} options: more than there are letters")
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices))
    context = f"Context: {hint.strip()}\n" if hint and hint.strip() else ""
    return f"{context}Question: {question.strip()}\nOptions: {options}{LETTER_ANSWER_SUFFIX}"


def convert_scienceqa(
    problems_file: str | Path,
    pid_splits_file: str | Path,
    *,
    split: str = "train",
    image_prefix: str = "",
    use_context: bool = True,
) -> ConversionResult:
    """One record per problem of `split`; image path `<prefix><split>/<pid>/image.png` when it has an image."""
    problems = load_json(problems_file, "ScienceQA problems.json: an object keyed by problem id")
    splits = load_json(pid_splits_file, "ScienceQA pid_splits.json: {split: [problem ids]}")
    if not isinstance(problems, dict):
        raise ConversionError(problems_file, "expected an object keyed by problem id")
    if not isinstance(splits, dict) or split not in splits:
        known = sorted(splits) if isinstance(splits, dict) else []
        raise ConversionError(pid_splits_file, f"no split {split!r} (known: {', '.join(known)})")
    pids = splits[split]
    if not isinstance(pids, list):
        raise ConversionError(pid_splits_file, f"split {split!r} should be a list of problem ids")

    result = ConversionResult(records=[])
    for pid in pids:
        pid = str(pid)
        if pid not in problems:
            raise ConversionError(problems_file, f"problem {pid} (listed in split {split!r}) is missing")
        problem: dict[str, Any] = problems[pid]
        where = f"problem {pid}"
        question = require(problem, "question", str, problems_file, where)
        choices = require(problem, "choices", list, problems_file, where)
        answer = require(problem, "answer", int, problems_file, where)
        if not choices or not all(isinstance(c, str) for c in choices):
            raise ConversionError(problems_file, f"{where}: 'choices' should be a non-empty list of strings")
        if not 0 <= answer < len(choices):
            raise ConversionError(problems_file, f"{where}: answer index {answer} outside {len(choices)} choices")
        hint = problem.get("hint") if use_context else ""
        hint = hint if isinstance(hint, str) else ""
        text = format_question(question, choices, hint)
        record: dict[str, Any] = {"id": pid}
        if problem.get("image"):
            record["image"] = f"{image_prefix}{split}/{pid}/{problem['image']}"
            text = f"{IMAGE_TOKEN}\n{text}"
        record["conversations"] = [turn("human", text), turn("gpt", string.ascii_uppercase[answer])]
        result.records.append(record)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problems", required=True, type=Path, help="ScienceQA problems.json")
    parser.add_argument("--pid-splits", required=True, type=Path, help="ScienceQA pid_splits.json")
    parser.add_argument("--split", default="train", help="split name in pid_splits.json (default train)")
    parser.add_argument("--image-prefix", default="", help="prepended to <split>/<pid>/image.png")
    parser.add_argument("--no-context", action="store_true", help="leave the hint (Context: ...) out")


def run(args: argparse.Namespace) -> ConversionResult:
    return convert_scienceqa(args.problems, args.pid_splits, split=args.split, image_prefix=args.image_prefix,
                             use_context=not args.no_context)
