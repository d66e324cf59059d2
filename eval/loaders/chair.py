"""CHAIR's input: COCO instance annotations (`images`, `annotations`, `categories`); each image is asked to describe."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from eval.items import BenchmarkFileError, EvalItem, confined, read_json, require

# The synthetic world's first detail prompt, and the usual CHAIR instruction of LVLM papers.
DESCRIBE_PROMPT = "Describe the image in detail."


def load_chair(file: Path, image_root: Path, prompt: str = DESCRIBE_PROMPT) -> list[EvalItem]:
    """One item per image; meta holds the names of the categories present and every category name."""
    raw = read_json(file)
    if not isinstance(raw, dict):
        raise BenchmarkFileError(f"{file}: expected a COCO instances object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise BenchmarkFileError(f"{file}: missing list {key!r} (COCO instances format)")
    names: dict[int, str] = {}
    for i, c in enumerate(raw["categories"]):
        require(c, ("id", "name"), f"{file} category #{i}")
        names[c["id"]] = c["name"]
    present: dict[int, set[str]] = defaultdict(set)
    for i, a in enumerate(raw["annotations"]):
        require(a, ("image_id", "category_id"), f"{file} annotation #{i}")
        if a["category_id"] not in names:
            raise BenchmarkFileError(f"{file} annotation #{i}: category_id {a['category_id']} is not in 'categories'")
        present[a["image_id"]].add(names[a["category_id"]])
    categories = sorted(set(names.values()))
    items = []
    for i, im in enumerate(raw["images"]):
        require(im, ("id", "file_name"), f"{file} image #{i}")
        items.append(EvalItem(im["id"], confined(image_root, im["file_name"]), prompt,
                              {"objects": sorted(present.get(im["id"], ())), "categories": categories}))
    return items
