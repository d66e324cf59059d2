"""Yes/no benchmarks: POPE JSONL files and MME's folder layout."""
from __future__ import annotations

from pathlib import Path

from eval.items import SHORT_ANSWER, BenchmarkFileError, EvalItem, confined, read_jsonl, require

POPE_SPLITS: tuple[str, ...] = ("adversarial", "popular", "random")


def load_pope(pope_dir: Path, image_root: Path, splits: tuple[str, ...] = POPE_SPLITS) -> list[EvalItem]:
    """`coco_pope_{split}.json` (one JSON object a line); ids restart per file, so ours are `{split}_{id}`."""
    items = []
    for split in splits:
        if split not in POPE_SPLITS:
            raise BenchmarkFileError(f"unknown POPE split {split!r}; known: {POPE_SPLITS}")
        file = pope_dir / f"coco_pope_{split}.json"
        for n, r in enumerate(read_jsonl(file), start=1):
            require(r, ("question_id", "image", "text"), f"{file} line {n}")
            items.append(EvalItem(f"{split}_{r['question_id']}", confined(image_root, r["image"]),
                                  r["text"] + SHORT_ANSWER, {"label": r.get("label"), "split": split}))
    return items


def _mme_pairs(task_dir: Path) -> list[tuple[Path, Path]]:
    """(image, questions txt) pairs in either of MME's two layouts, sorted by image name."""
    if (task_dir / "questions_answers_YN").is_dir():
        txts = sorted((task_dir / "questions_answers_YN").glob("*.txt"))
        image_dir = task_dir / "images"
    else:
        txts = sorted(task_dir.glob("*.txt"))
        image_dir = task_dir
    pairs = []
    for txt in txts:
        image = next((image_dir / (txt.stem + ext) for ext in (".jpg", ".png", ".jpeg")
                      if (image_dir / (txt.stem + ext)).is_file()), None)
        if image is None:
            raise BenchmarkFileError(f"{txt}: no image {txt.stem}.jpg/.png in {image_dir}")
        pairs.append((image, txt))
    return pairs


def load_mme(root: Path) -> list[EvalItem]:
    """`MME_Benchmark_release_version/<subtask>/`: each image's txt holds `question<TAB>Yes|No` lines."""
    if not root.is_dir():
        raise BenchmarkFileError(f"{root}: MME folder not found")
    items = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image, txt in _mme_pairs(task_dir):
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or parts[1].strip() not in ("Yes", "No"):
                    raise BenchmarkFileError(f"{txt}:{n}: expected 'question<TAB>Yes|No', got {line!r}")
                question, answer = parts[0].strip(), parts[1].strip()
                qid = f"{task_dir.name}/{image.name}#{n}"
                items.append(EvalItem(qid, confined(root, image.relative_to(root)), question + SHORT_ANSWER,
                                      {"answer": answer, "subtask": task_dir.name, "image_name": image.name}))
    if not items:
        raise BenchmarkFileError(f"{root}: no MME questions found (expected <subtask>/<image>.txt files)")
    return items
