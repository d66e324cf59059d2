"""COCO captions (`{images, annotations}`) -> LLaVA alignment pairs with varied brief-description prompts."""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from instruct_data.converters.common import (
    IMAGE_TOKEN,
    ConversionError,
    ConversionResult,
    load_json,
    require,
    turn,
)

# The brief-description instructions listed in the LLaVA paper for its caption-based alignment data.
BRIEF_PROMPTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)

PER_IMAGE_CHOICES = ("all", "first", "random")


def alignment_prompt(record_id: str, seed: int) -> str:
    """The human turn for one record: a prompt chosen by (seed, id), with `<image>` before or after it."""
    rng = random.Random(f"{seed}:{record_id}")  # keyed by id: the choice does not depend on file order
    prompt = rng.choice(BRIEF_PROMPTS)
    return f"{IMAGE_TOKEN}\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n{IMAGE_TOKEN}"


def convert_coco_captions(
    captions_file: str | Path,
    *,
    image_prefix: str = "",
    seed: int = 0,
    per_image: str = "all",
) -> ConversionResult:
    """One alignment record per caption (`per_image="all"`) or per image (`first` / seeded `random` caption)."""
    if per_image not in PER_IMAGE_CHOICES:
        raise ValueError(f"per_image must be one of {PER_IMAGE_CHOICES}, got {per_image!r}")
    data = load_json(captions_file, "COCO captions JSON with 'images' and 'annotations'")
    if not isinstance(data, dict):
        raise ConversionError(captions_file, "expected an object with 'images' and 'annotations'")
    images = require(data, "images", list, captions_file, "top level")
    annotations = require(data, "annotations", list, captions_file, "top level")

    file_names: dict[int, str] = {}
    for i, image in enumerate(images):
        image_id = require(image, "id", int, captions_file, f"images[{i}]")
        file_names[image_id] = require(image, "file_name", str, captions_file, f"images[{i}]")

    by_image: dict[int, list[tuple[int, str]]] = {}
    result = ConversionResult(records=[])
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        image_id = require(ann, "image_id", int, captions_file, where)
        caption = require(ann, "caption", str, captions_file, where).strip()
        ann_id = ann.get("id", i)
        if image_id not in file_names:
            raise ConversionError(captions_file, f"{where}: image_id {image_id} is not in 'images'")
        if not caption:
            result.drop("empty caption")
            continue
        by_image.setdefault(image_id, []).append((ann_id, caption))

    for image_id, captions in by_image.items():
        if per_image == "first":
            captions = captions[:1]
        elif per_image == "random":
            captions = [random.Random(f"{seed}:{image_id}").choice(captions)]
        for ann_id, caption in captions:
            record_id = f"{image_id}" if per_image != "all" else f"{image_id}_{ann_id}"
            result.records.append({
                "id": record_id,
                "image": image_prefix + file_names[image_id],
                "conversations": [turn("human", alignment_prompt(record_id, seed)), turn("gpt", caption)],
            })
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", required=True, type=Path, help="COCO captions_*.json")
    parser.add_argument("--image-prefix", default="", help="prepended to file_name, e.g. coco/train2017/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt choice")
    parser.add_argument("--per-image", choices=PER_IMAGE_CHOICES, default="all",
                        help="one record per caption (all) or one per image (first / random caption)")


def run(args: argparse.Namespace) -> ConversionResult:
    return convert_coco_captions(args.captions, image_prefix=args.image_prefix, seed=args.seed,
                                 per_image=args.per_image)
