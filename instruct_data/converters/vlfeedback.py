"""VLFeedback (`id`, `prompt`, `completions` rated by GPT-4V, `img_path` or embedded `image`) -> preference records.

Chosen = the highest-rated completion, rejected = the lowest-rated one (the first of each on ties); rating = the
mean of the three aspects by default, or one aspect (`--aspect "Visual Faithfulness"`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from instruct_data.converters.common import ConversionError, ConversionResult
from instruct_data.converters.preference_common import (
    ImageWriter,
    preference_record,
    read_rows,
    record_id,
    resolve_image,
    text_field,
)

ASPECTS: tuple[str, ...] = ("Helpfulness", "Visual Faithfulness", "Ethical Considerations")


def convert_vlfeedback(files: list[str | Path], *, image_root: str | Path | None = None, image_prefix: str = "",
                       aspect: str = "average") -> ConversionResult:
    """One record per row whose completions are not all rated alike."""
    if aspect != "average" and aspect not in ASPECTS:
        raise ValueError(f"aspect must be 'average' or one of {ASPECTS}, got {aspect!r}")
    images = ImageWriter(Path(image_root) if image_root is not None else None, "vlfeedback")
    result = ConversionResult(records=[])
    for file in files:
        for where, row in read_rows(file):
            prompt = text_field(row, "prompt", file, where)
            completions = _completions(row, file, where)
            if len(completions) < 2:
                result.drop("fewer than two completions")
                continue
            rated = [(_rating(c, aspect, file, f"{where} completions[{i}]"), text_field(
                c, "response", file, f"{where} completions[{i}]")) for i, c in enumerate(completions)]
            best = max(range(len(rated)), key=lambda i: rated[i][0])  # max/min return the first on ties
            worst = min(range(len(rated)), key=lambda i: rated[i][0])
            if rated[best][0] == rated[worst][0]:
                result.drop("all completions rated alike")
                continue
            image = resolve_image(row, ("img_path", "image_path"), images, image_prefix, file, where)
            record = preference_record(record_id(row, "vlfeedback", where), image, prompt, rated[best][1],
                                       rated[worst][1], result)
            if record is not None:
                result.records.append(record)
    return result


def _completions(row: dict[str, Any], file: str | Path, where: str) -> list[dict[str, Any]]:
    """The completions as a list of objects; the Arrow layout of a `Sequence` of structs (a dict of lists) too."""
    value = row.get("completions")
    if isinstance(value, dict):  # {"model": [...], "response": [...], "annotations": [...]}
        lengths = {len(v) for v in value.values() if isinstance(v, list)}
        if len(lengths) != 1 or not all(isinstance(v, list) for v in value.values()):
            raise ConversionError(file, f"{where} (id {row.get('id')!r}): 'completions' columns differ in length")
        n = lengths.pop()
        return [{k: v[i] for k, v in value.items()} for i in range(n)]
    if not isinstance(value, list):
        raise ConversionError(file, f"{where} (id {row.get('id')!r}): missing field 'completions' (a list of "
                                    "{model, response, annotations})")
    return value


def _rating(completion: Any, aspect: str, file: str | Path, where: str) -> float:
    annotations = completion.get("annotations") if isinstance(completion, dict) else None
    if not isinstance(annotations, dict):
        raise ConversionError(file, f"{where}: missing field 'annotations'")
    wanted = ASPECTS if aspect == "average" else (aspect,)
    values = []
    for name in wanted:
        entry = annotations.get(name)
        if not isinstance(entry, dict) or "Rating" not in entry:
            raise ConversionError(file, f"{where}: annotations have no {name!r} Rating")
        try:
            values.append(float(entry["Rating"]))
        except (TypeError, ValueError):
            raise ConversionError(file, f"{where}: {name!r} Rating {entry['Rating']!r} is not a number") from None
    return sum(values) / len(values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, nargs="+", type=Path,
                        help="vlfeedback_80k.jsonl (or .parquet / .json rows with the same fields)")
    parser.add_argument("--image-root", type=Path, help="folder embedded images are written to (parquet with an "
                                                        "`image` column)")
    parser.add_argument("--image-prefix", default="", help="prepended to img_path, e.g. the merged_images/ folder")
    parser.add_argument("--aspect", default="average", choices=("average", *ASPECTS),
                        help="rating that orders the completions (default: the mean of the three aspects)")


def run(args: argparse.Namespace) -> ConversionResult:
    return convert_vlfeedback(args.input, image_root=args.image_root, image_prefix=args.image_prefix,
                              aspect=args.aspect)
