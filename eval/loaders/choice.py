"""Multiple-choice benchmarks: ScienceQA (problems.json + pid_splits.json), MMBench TSV, SEED JSON."""
from __future__ import annotations

import base64
import csv
import io
import sys
from pathlib import Path

from PIL import Image

from eval.metrics.choice import LETTERS
from eval.items import CHOICE_ANSWER, BenchmarkFileError, EvalItem, confined, read_json, require


def options_block(options: list[str]) -> str:
    """`A. first\\nB. second ...` as LLaVA lists options."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def load_scienceqa(problems_file: Path, splits_file: Path, image_root: Path, split: str = "test") -> list[EvalItem]:
    """ScienceQA-IMG: problems of `split` that have an image; image at `<split>/<pid>/image.png`."""
    problems = read_json(problems_file)
    pid_splits = read_json(splits_file)
    if split not in pid_splits:
        raise BenchmarkFileError(f"{splits_file}: no split {split!r}; has {sorted(pid_splits)}")
    items = []
    for pid in pid_splits[split]:
        pid = str(pid)
        if pid not in problems:
            raise BenchmarkFileError(f"{problems_file}: no problem {pid} (listed in {splits_file} split {split})")
        p = problems[pid]
        where = f"{problems_file} problem {pid}"
        require(p, ("question", "choices", "answer"), where)
        if not p.get("image"):
            continue
        hint = (p.get("hint") or "").strip()
        text = (f"Context: {hint}\n" if hint else "") + p["question"] + "\n" + options_block(p["choices"])
        image = confined(image_root, f"{split}/{pid}/{p['image']}")
        if not image.is_file():  # the synthetic world names its images relative to the image root
            image = confined(image_root, p["image"])
        items.append(EvalItem(pid, image, text + CHOICE_ANSWER,
                              {"answer": int(p["answer"]), "n_choices": len(p["choices"])}))
    return items


def _decode_image(b64: str, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(base64.b64decode(b64)))
        image.load()
    except Exception as err:  # PIL raises many types for bad bytes; all mean the same here
        raise BenchmarkFileError(f"{where}: image column is not a decodable base64 image ({err})") from None
    return image.convert("RGB")


def load_mmbench(tsv: Path, circular: bool = True) -> list[EvalItem]:
    """MMBench TSV (base64 images); with `circular`, an N-option question is asked N times, options rotated."""
    if not tsv.is_file():
        raise BenchmarkFileError(f"{tsv}: file not found")
    csv.field_size_limit(sys.maxsize)  # base64 images exceed csv's default field limit
    items = []
    with tsv.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
            where = f"{tsv} line {n}"
            require(row, ("index", "question", "image", "A", "B"), where)
            options = [row[c] for c in LETTERS[:5] if row.get(c) not in (None, "", "nan")]
            image = _decode_image(row["image"], where)
            hint = row.get("hint") or ""
            hint = "" if hint == "nan" else hint
            answer = row.get("answer") or None
            for r in range(len(options) if circular else 1):
                rotated = options[r:] + options[:r]
                gold = None
                if answer:
                    gold = LETTERS[(LETTERS.index(answer) - r) % len(options)]
                text = (hint + "\n" if hint else "") + row["question"] + "\n" + options_block(rotated) + CHOICE_ANSWER
                items.append(EvalItem(f"{row['index']}@{r}", image, text,
                                      {"options": rotated, "answer": gold, "group": row["index"], "rotation": r,
                                       "category": row.get("category", "")}))
    return items


def load_seed(file: Path, image_root: Path) -> list[EvalItem]:
    """SEED-Bench JSON: image questions only (video ones skipped, as LLaVA-1.5 reports), 4 options."""
    raw = read_json(file)
    if not isinstance(raw, dict) or "questions" not in raw:
        raise BenchmarkFileError(f"{file}: expected an object with a 'questions' list")
    type_names = {v: k for k, v in (raw.get("question_type") or {}).items()}
    items = []
    for i, q in enumerate(raw["questions"]):
        if q.get("data_type", "image") != "image":
            continue
        require(q, ("question_id", "question", "data_id", "choice_a", "choice_b"), f"{file} question #{i}")
        options = [q[k] for k in ("choice_a", "choice_b", "choice_c", "choice_d") if k in q]
        text = q["question"] + "\n" + options_block(options) + CHOICE_ANSWER
        category = type_names.get(q.get("question_type_id"), str(q.get("question_type_id", "")))
        items.append(EvalItem(q["question_id"], confined(image_root, q["data_id"]), text,
                              {"options": options, "answer": q.get("answer"), "category": category}))
    return items
