"""MME: the official yes/no parsing, acc and acc+ per subtask, perception and cognition totals."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION: tuple[str, ...] = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


@dataclass(frozen=True)
class MMEQuestion:
    """Gold answer (`Yes`/`No`), subtask folder name and the image the question is about."""

    answer: str
    subtask: str
    image: str


def mme_parse(text: str) -> str:
    """Lowercased; `yes`/`no` as is, else `yes` then `no` searched in the first 4 characters, else `other`."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_mme(predictions: Mapping[str, str], questions: Mapping[str, MMEQuestion]) -> dict[str, object]:
    """Per subtask 100*acc + 100*acc+ (acc+: every question of an image right); category totals."""
    missing = [q for q in questions if q not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}")
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for qid, q in questions.items():
        by_task[q.subtask][q.image].append(mme_parse(predictions[qid]) == q.answer.lower())
    subtasks: dict[str, dict[str, float]] = {}
    raw: dict[str, float] = {}  # totals are sums of unrounded subtask scores, as the official script
    for task, images in sorted(by_task.items()):
        flat = [h for hits in images.values() for h in hits]
        acc = 100 * sum(flat) / len(flat)
        acc_plus = 100 * sum(all(hits) for hits in images.values()) / len(images)
        raw[task] = acc + acc_plus
        subtasks[task] = {"acc": round(acc, 2), "acc_plus": round(acc_plus, 2), "score": round(acc + acc_plus, 2)}
    unknown = sorted(set(subtasks) - set(PERCEPTION) - set(COGNITION))
    totals = {
        "perception": round(sum(raw[t] for t in PERCEPTION if t in raw), 2),
        "cognition": round(sum(raw[t] for t in COGNITION if t in raw), 2),
    }
    out: dict[str, object] = {**totals, "subtasks": subtasks, "n": len(questions)}
    if unknown:
        out["unknown_subtasks"] = unknown  # scored but not in either official total
    return out
