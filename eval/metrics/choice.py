"""Multiple-choice scorers: ScienceQA-IMG (LLaVA's rules), MMBench circular, SEED letter accuracy."""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SQA_OPTIONS = ("A", "B", "C", "D", "E")
# LLaVA's pattern, unescaped dot included: "The answer is B," matches, "The answer is B" at the end does not.
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[.):]|\s|$)")


def sqa_parse(text: str) -> str | None:
    """Accepted: a bare option letter, `X. ...`, or exactly one `The answer is X.`; else None (wrong)."""
    if text in SQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _SQA_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def score_scienceqa(predictions: Mapping[str, str], gold: Mapping[str, tuple[int, int]]) -> dict[str, object]:
    """`gold[qid] = (answer index, number of choices)`; accuracy (100x, 2 decimals)."""
    missing = [q for q in gold if q not in predictions]
    if missing or not gold:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}" if missing
                         else "no questions to score")
    correct = 0
    for qid, (answer, n_choices) in gold.items():
        letter = sqa_parse(predictions[qid])
        # A letter past the last choice counts as a failed parse (LLaVA's get_pred_idx returns -1).
        idx = SQA_OPTIONS.index(letter) if letter is not None and letter in SQA_OPTIONS[:n_choices] else -1
        correct += idx == answer
    return {"accuracy": round(100 * correct / len(gold), 2), "correct": correct, "n": len(gold)}


def extract_letter(text: str, options: Sequence[str]) -> str | None:
    """Rule-based choice extraction (MMBench's matcher without its GPT fallback, SEED).

    A leading letter (`B`, `B.`, `(B)`, `B) ...`), then `The answer is B`, then an answer equal to
    exactly one option's text (case-insensitive). Letters beyond the options are rejected.
    """
    valid = LETTERS[: len(options)]
    text = text.strip()
    m = _LEADING_LETTER.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    found = [c for c in re.findall(r"answer is \(?([A-Z])\b", text) if c in valid]
    if len(found) == 1:
        return found[0]
    same = [LETTERS[i] for i, o in enumerate(options) if o.strip().lower() == text.rstrip(".").lower()]
    return same[0] if len(same) == 1 else None


@dataclass(frozen=True)
class ChoiceQuestion:
    """One asked variant: its options in the order shown, the gold letter, group and category."""

    options: tuple[str, ...]
    answer: str
    group: str = ""
    category: str = ""


def _pct(hits: Sequence[bool]) -> float:
    return round(100 * sum(hits) / len(hits), 2)


def score_choice(
    predictions: Mapping[str, str], questions: Mapping[str, ChoiceQuestion], *, circular: bool = False
) -> dict[str, object]:
    """Letter accuracy per category; with `circular`, a group counts only if all its rotations are right."""
    missing = [q for q in questions if q not in predictions]
    if missing or not questions:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}" if missing
                         else "no questions to score")
    hits = {q: extract_letter(predictions[q], c.options) == c.answer for q, c in questions.items()}
    if not circular:
        per: dict[str, list[bool]] = defaultdict(list)
        for q, c in questions.items():
            per[c.category].append(hits[q])
        return {"accuracy": _pct(list(hits.values())), "per_category": {k: _pct(v) for k, v in sorted(per.items())},
                "n": len(hits)}
    groups: dict[str, list[bool]] = defaultdict(list)
    category: dict[str, str] = {}
    for q, c in questions.items():
        groups[c.group].append(hits[q])
        category[c.group] = c.category
    group_ok = {g: all(v) for g, v in groups.items()}
    per_cat: dict[str, list[bool]] = defaultdict(list)
    for g, ok in group_ok.items():
        per_cat[category[g]].append(ok)
    return {"circular_accuracy": _pct(list(group_ok.values())),
            "per_category": {k: _pct(v) for k, v in sorted(per_cat.items())},
            "per_question_accuracy": _pct(list(hits.values())), "n_groups": len(group_ok), "n": len(hits)}
