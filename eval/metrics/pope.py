"""POPE: LLaVA's yes/no parsing, then accuracy, precision, recall, F1 (positive = yes) and yes-ratio."""
from __future__ import annotations

from collections.abc import Mapping


def pope_parse(text: str) -> str:
    """First sentence, commas dropped, split on single spaces; any of `No`/`no`/`not` means no."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def pope_metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """Metrics of one split as fractions in [0, 1] (LLaVA prints them this way)."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"POPE needs as many predictions as labels (got {len(predictions)} vs {len(labels)})")
    pred = [pope_parse(p) == "yes" for p in predictions]
    gold = [lab != "no" for lab in labels]  # LLaVA: anything but "no" counts as yes
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    tn = sum(not p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(not p and g for p, g in zip(pred, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(gold), "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": sum(pred) / len(pred), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(gold),
    }


def score_pope(
    predictions: Mapping[str, str], labels: Mapping[str, str], splits: Mapping[str, str]
) -> dict[str, object]:
    """Per split metrics plus the mean F1 over splits (100x, the number LLaVA-1.5 reports)."""
    missing = [q for q in labels if q not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}")
    per_split: dict[str, dict[str, float]] = {}
    for split in sorted(set(splits.values())):
        qids = [q for q in labels if splits[q] == split]
        per_split[split] = pope_metrics([predictions[q] for q in qids], [labels[q] for q in qids])
    mean_f1 = sum(m["f1"] for m in per_split.values()) / len(per_split)
    mean_acc = sum(m["accuracy"] for m in per_split.values()) / len(per_split)
    return {"f1": round(100 * mean_f1, 2), "accuracy": round(100 * mean_acc, 2), "per_split": per_split,
            "n": len(labels)}
