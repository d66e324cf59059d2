"""GQA accuracy (LLaVA's `rstrip('.')` + lowercase, then the official exact match) and text-only QA."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from eval.metrics.answer_normalize import vqa_normalize


def gqa_normalize(prediction: str) -> str:
    """LLaVA's conversion before the official GQA script: strip trailing periods, lowercase."""
    return prediction.rstrip(".").lower()


def _require_all(predictions: Mapping[str, str], gold: Mapping[str, object]) -> None:
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}")
    if not gold:
        raise ValueError("no questions to score")


def score_gqa(
    predictions: Mapping[str, str], answers: Mapping[str, str], groups: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Accuracy (100x, 2 decimals) and, when `groups` maps qid -> structural type, accuracy per type."""
    _require_all(predictions, answers)
    hits = {qid: float(gqa_normalize(predictions[qid]) == gold) for qid, gold in answers.items()}
    out: dict[str, object] = {"accuracy": round(100 * sum(hits.values()) / len(hits), 2), "n": len(hits)}
    if groups:
        per: dict[str, list[float]] = defaultdict(list)
        for qid, h in hits.items():
            per[groups.get(qid, "")].append(h)
        out["per_type"] = {k: round(100 * sum(v) / len(v), 2) for k, v in sorted(per.items())}
    return out


def score_text_qa(predictions: Mapping[str, str], answers: Mapping[str, str]) -> dict[str, object]:
    """Text-only QA: exact match after the full VQA normalization of both sides."""
    _require_all(predictions, answers)
    hits = [vqa_normalize(predictions[q]) == vqa_normalize(a) for q, a in answers.items()]
    return {"accuracy": round(100 * sum(hits) / len(hits), 2), "n": len(hits)}
