"""Test-split evaluation files in the official formats: VQAv2, POPE, COCO captions, ScienceQA, text-only Q&A.

Image references are file names inside `<world>/images/test/` (VQAv2 questions carry them in an extra `image`
key, next to the official `image_id`); ScienceQA images are copied to its own `images/test/<pid>/image.png` layout.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from synthetic.llava_records import MCQ_KINDS, multiple_choice
from synthetic.questions import SHORT_ANSWER_SUFFIX, answer_variants, sample_questions
from synthetic.text import coco_references
from synthetic.textonly import MIXES, OPPOSITES, sample_fact
from synthetic.world import ALL_PAIRS, Scene, scene_rng

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
_INFO = {"description": "synthetic world test split", "version": "1.0", "year": 2026}
_LICENSE = {"name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}


def vqav2_files(scenes: list[Scene], seed: int, per_image: int) -> tuple[dict, dict, dict]:
    """(questions, annotations, splits) where splits maps str(question_id) -> `seen` | `heldout`."""
    questions, annotations, splits = [], [], {}
    for scene in scenes:
        rng = scene_rng(seed, scene.split, scene.id, "vqav2")
        for j, qa in enumerate(sample_questions(scene, rng, per_image, list(ALL_PAIRS))):
            qid = scene.id * 10 + j
            questions.append({"image_id": scene.id, "question": qa.question, "question_id": qid,
                              "image": scene.file_name})
            answers = answer_variants(qa, rng)
            annotations.append({
                "question_id": qid, "image_id": scene.id, "question_type": qa.question_type,
                "answer_type": qa.answer_type, "multiple_choice_answer": qa.answer,
                "answers": [{"answer": a, "answer_confidence": "yes" if a == qa.answer else "maybe", "answer_id": k + 1}
                            for k, a in enumerate(answers)],
            })
            splits[str(qid)] = "heldout" if qa.held_out else "seen"
    head = {"info": _INFO, "license": _LICENSE, "data_type": "synthetic", "data_subtype": "test"}
    return ({**head, "task_type": "Open-Ended", "questions": questions}, {**head, "annotations": annotations}, splits)


def pope_files(scenes: list[Scene], seed: int, max_images: int, per_image: int = 3) -> dict[str, list[dict]]:
    """POPE JSONL rows per split; each image gets up to `per_image` yes and as many no questions."""
    frequency = Counter(o.pair for s in scenes for o in s.objects)
    by_popularity = sorted(ALL_PAIRS, key=lambda p: (-frequency[p], p))
    out: dict[str, list[dict]] = {}
    for split in POPE_SPLITS:
        rows: list[dict] = []
        for scene in scenes[:max_images]:
            rng = scene_rng(seed, scene.split, scene.id, f"pope-{split}")
            present = [o.pair for o in scene.objects]
            positives = rng.sample(present, min(per_image, len(present)))
            absent = [p for p in ALL_PAIRS if p not in present]
            if split == "random":
                negatives = rng.sample(absent, len(positives))
            elif split == "popular":
                negatives = [p for p in by_popularity if p not in present][: len(positives)]
            else:  # adversarial: share the colour or the shape of a present object, most frequent first
                hard = [p for p in by_popularity if p in absent and any(p[0] == c or p[1] == s for c, s in present)]
                negatives = hard[: len(positives)]
            for pos, neg in zip(positives, negatives):
                for (c, s), label in ((pos, "yes"), (neg, "no")):
                    rows.append({"question_id": len(rows) + 1, "image": scene.file_name,
                                 "text": f"Is there a {c} {s} in the image?", "label": label})
        out[split] = rows
    return out


def coco_captions(scenes: list[Scene], seed: int, image_size: int, width: int | None = None) -> dict:
    images, annotations = [], []
    width = image_size if width is None else width
    for scene in scenes:
        images.append({"id": scene.id, "file_name": scene.file_name, "width": width, "height": image_size})
        rng = scene_rng(seed, scene.split, scene.id, "coco")
        for caption in coco_references(scene, rng):
            annotations.append({"image_id": scene.id, "id": len(annotations) + 1, "caption": caption})
    return {"info": _INFO, "licenses": [_LICENSE], "type": "captions", "images": images, "annotations": annotations}


def chair_instances(scenes: list[Scene], image_size: int, width: int | None = None) -> dict:
    """COCO instances format for CHAIR: one category per colour-shape pair, one box (its grid cell) per object."""
    width = image_size if width is None else width
    category = {pair: k + 1 for k, pair in enumerate(ALL_PAIRS)}
    images, annotations = [], []
    for scene in scenes:
        images.append({"id": scene.id, "file_name": scene.file_name, "width": width, "height": image_size})
        for obj in scene.objects:
            w, h = width / 3, image_size / 3
            annotations.append({"id": len(annotations) + 1, "image_id": scene.id, "category_id": category[obj.pair],
                                "bbox": [round(obj.col * w, 2), round(obj.row * h, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0})
    categories = [{"id": k, "name": f"{c} {s}", "supercategory": s} for (c, s), k in category.items()]
    return {"info": _INFO, "licenses": [_LICENSE], "images": images, "annotations": annotations,
            "categories": categories}


def scienceqa_files(scenes: list[Scene], seed: int, max_images: int, num_text: int) -> tuple[dict, dict, list[tuple[str, Scene]]]:
    """(problems, pid_splits, [(pid, scene)] whose image must be copied to images/test/<pid>/image.png)."""
    problems: dict[str, dict] = {}
    with_images: list[tuple[str, Scene]] = []
    common = {"task": "closed choice", "grade": "grade1", "subject": "natural science", "lecture": "", "split": "test"}
    for scene in scenes[:max_images]:
        rng = scene_rng(seed, scene.split, scene.id, "scienceqa")
        qas = sample_questions(scene, rng, 1, list(ALL_PAIRS), kinds=MCQ_KINDS)
        if not qas:
            continue
        choices, answer = multiple_choice(qas[0], rng)
        pid = str(100000 + scene.id)
        problems[pid] = {**common, "question": qas[0].question, "choices": choices, "answer": answer, "hint": "",
                         "image": "image.png", "topic": "shapes", "category": qas[0].kind, "skill": qas[0].kind,
                         "solution": f"The answer is {choices[answer]}."}
        with_images.append((pid, scene))
    rng = random.Random(f"{seed}/scienceqa/text")
    for i in range(num_text):
        question, answer, options = _text_mcq(rng)
        choices = rng.sample(options, len(options))
        pid = str(900000 + i)
        problems[pid] = {**common, "question": question, "choices": choices, "answer": choices.index(answer),
                         "hint": "", "image": None, "topic": "words", "category": "facts", "skill": "facts",
                         "solution": f"The answer is {answer}."}
    return problems, {"train": [], "val": [], "minival": [], "test": list(problems)}, with_images


def _text_mcq(rng: random.Random) -> tuple[str, str, list[str]]:
    if rng.random() < 0.5:
        c1, c2, answer = rng.choice(MIXES)
        others = sorted({m[2] for m in MIXES} - {answer})
        return f"What color do you get when you mix {c1} and {c2}?", answer, [answer] + rng.sample(others, 2)
    word, answer = rng.choice(OPPOSITES)
    others = sorted({w for p in OPPOSITES for w in p} - {word, answer})
    return f"What is the opposite of {word}?", answer, [answer] + rng.sample(others, 2)


def text_questions(seed: int, n: int) -> list[dict]:
    """Text-only questions `{question_id, text, answer}`; `text` carries the short-answer suffix."""
    rng = random.Random(f"{seed}/text-eval")
    rows = []
    for i in range(n):
        fact = sample_fact(rng)
        rows.append({"question_id": i + 1, "text": fact.question + SHORT_ANSWER_SUFFIX, "answer": fact.answer,
                     "category": fact.kind})
    return rows


def scienceqa_image_path(root: Path, pid: str) -> Path:
    return root / "eval" / "scienceqa" / "images" / "test" / pid / "image.png"
