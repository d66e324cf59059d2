"""VQAv2 accuracy exactly as the official scorer computes it (leave-one-out, 2-decimal rounding)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eval.metrics.answer_normalize import clean_whitespace, evalai_normalize, vqa_normalize


@dataclass(frozen=True)
class VQAGroundTruth:
    """The human answers of one question plus the types the official scorer groups by."""

    answers: tuple[str, ...]
    question_type: str = ""
    answer_type: str = ""


def leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    """Mean over humans of min(1, matches among the other humans / 3)."""
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    accs = []
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


def vqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's accuracy in [0, 1]; normalization only if the humans disagree (official quirk)."""
    pred = clean_whitespace(prediction)
    gts = [clean_whitespace(a) for a in answers]
    if len(set(gts)) > 1:
        gts = [vqa_normalize(a) for a in gts]
        pred = vqa_normalize(pred)
    return leave_one_out(pred, gts)


def evalai_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA / VizWiz: the EvalAI processor on prediction and every human answer, then leave-one-out."""
    return leave_one_out(evalai_normalize(prediction), [evalai_normalize(a) for a in answers])


def _pct(values: Sequence[float]) -> float:
    return round(100.0 * sum(values) / len(values), 2)


def score_vqa(
    predictions: Mapping[str, str], ground_truth: Mapping[str, VQAGroundTruth], *, evalai: bool = False
) -> dict[str, object]:
    """Overall, per answer type and per question type accuracy (100x, 2 decimals) over `ground_truth`.

    Every question of `ground_truth` needs a prediction (the official scorer asserts the same).
    """
    missing = [qid for qid in ground_truth if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}")
    per_q: list[float] = []
    by_ans: dict[str, list[float]] = defaultdict(list)
    by_ques: dict[str, list[float]] = defaultdict(list)
    for qid, gt in ground_truth.items():
        fn = evalai_question_accuracy if evalai else vqa_question_accuracy
        acc = fn(predictions[qid], gt.answers)
        per_q.append(acc)
        by_ans[gt.answer_type].append(acc)
        by_ques[gt.question_type].append(acc)
    if not per_q:
        raise ValueError("no questions to score")
    return {
        "accuracy": _pct(per_q),
        "per_answer_type": {k: _pct(v) for k, v in sorted(by_ans.items())},
        "per_question_type": {k: _pct(v) for k, v in sorted(by_ques.items())},
        "n": len(per_q),
    }
