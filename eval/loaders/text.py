"""Captions (COCO annotations, Karpathy split), LLaVA question JSONL and text-only QA JSONL."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from eval.items import CAPTION_PROMPT, BenchmarkFileError, EvalItem, confined, read_json, read_jsonl, require


def load_coco_captions(file: Path, image_root: Path, split: str = "test") -> list[EvalItem]:
    """COCO `captions_*.json` (images + annotations) or Karpathy `dataset_coco.json` (its `split` kept)."""
    raw = read_json(file)
    if not isinstance(raw, dict) or "images" not in raw:
        raise BenchmarkFileError(f"{file}: expected an object with an 'images' list")
    items = []
    if "annotations" in raw:
        refs: dict[int, list[str]] = defaultdict(list)
        for i, a in enumerate(raw["annotations"]):
            require(a, ("image_id", "caption"), f"{file} annotation #{i}")
            refs[a["image_id"]].append(a["caption"])
        for i, im in enumerate(raw["images"]):
            require(im, ("id", "file_name"), f"{file} image #{i}")
            items.append(EvalItem(im["id"], confined(image_root, im["file_name"]), CAPTION_PROMPT,
                                  {"references": refs.get(im["id"], [])}))
        return items
    for i, im in enumerate(raw["images"]):  # Karpathy format
        require(im, ("filename", "sentences"), f"{file} image #{i}")
        if im.get("split") != split:
            continue
        rel = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        qid = im.get("cocoid", im.get("imgid", im["filename"]))
        items.append(EvalItem(qid, confined(image_root, rel), CAPTION_PROMPT,
                              {"references": [s["raw"] for s in im["sentences"]]}))
    return items


def load_llava_jsonl(file: Path, image_root: Path) -> list[EvalItem]:
    """LLaVA's question JSONL: `{question_id, image?, text, category?, answer?}`; text used as the prompt."""
    items = []
    for n, r in enumerate(read_jsonl(file), start=1):
        require(r, ("question_id", "text"), f"{file} line {n}")
        image = confined(image_root, r["image"]) if r.get("image") else None
        items.append(EvalItem(r["question_id"], image, r["text"],
                              {"answer": r.get("answer"), "category": r.get("category", "")}))
    return items


def load_text_qa(file: Path) -> list[EvalItem]:
    """Text-only QA JSONL `{question_id, text, answer}` (language ability kept after tuning)."""
    items = []
    for n, r in enumerate(read_jsonl(file), start=1):
        require(r, ("question_id", "text", "answer"), f"{file} line {n}")
        items.append(EvalItem(r["question_id"], None, r["text"], {"answer": r["answer"]}))
    return items
