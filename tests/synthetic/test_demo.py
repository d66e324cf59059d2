"""The reduced main job end to end: world, backbones, both phases, benchmarks, chat, report — and re-runs reuse stages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main as vlm

REPORT_KEYS = {
    "vqa_accuracy_seen", "vqa_accuracy_heldout", "vqa_accuracy_blind", "vqa_accuracy_prior_baseline", "pope_f1",
    "caption_cider", "mcq_accuracy", "text_only_accuracy", "wall_seconds",
}


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    assert vlm(["demo", "--profile", "ci", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_reduced_demo_writes_the_report_and_reuses_finished_stages(demo_out: Path):
    report = json.loads((demo_out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    for key in REPORT_KEYS - {"wall_seconds"}:
        assert isinstance(report[key], (int, float)), key
    stages = report["wall_seconds"]
    for stage in ("world", "align", "instruct", "eval_vqa", "total"):
        assert stages[stage] > 0, stage
    # The shipped backbones are used and the ablation is not run unless asked (--ablations).
    assert report["backbones"] == "shipped" and "backbones" not in stages
    assert "instruct_without_alignment" not in stages and "no_alignment_vqa_accuracy_seen" not in report
    assert (demo_out / "instruct" / "vlm_config.json").is_file()

    assert vlm(["demo", "--profile", "ci", "--out", str(demo_out)]) == 0
    again = json.loads((demo_out / "report.json").read_text())
    assert again["wall_seconds"]["align"] == stages["align"]  # not retrained
    assert again["vqa_accuracy_seen"] == report["vqa_accuracy_seen"]


def question_type_accuracy(demo_out: Path, evaluation: str) -> dict[str, float]:
    return json.loads((demo_out / "eval" / evaluation / "scores.json").read_text())["scores"]["per_question_type"]


@pytest.mark.slow
def test_reduced_demo_answers_from_the_image(demo_out: Path):
    report = json.loads((demo_out / "report.json").read_text())
    # Learning that cannot happen by chance: looking at the image must beat both the same model on blank images
    # and the best image-free guess (the most frequent answer per question type) by several standard errors of
    # the ~800 seen questions (about 1.8 points). The margins (6 and 7 points) were set under the worst of five
    # phase-2 seeds of the earlier design; the run on the shipped backbones with caption chats beat blind and the
    # baseline by 22.6 and 20.5.
    assert report["vqa_accuracy_seen"] >= report["vqa_accuracy_blind"] + 6, report
    assert report["vqa_accuracy_seen"] >= report["vqa_accuracy_prior_baseline"] + 7, report
    # "Where is the <colour> <shape>?" has nine answers and cannot be guessed from the question: the model must
    # find the object among the image tokens. ~140 such questions: a guesser scores 11 +- 2.7 (measured: 52.5 with
    # the image, 0.0 on blank images).
    where, where_blind = (question_type_accuracy(demo_out, name)["where is the"] for name in ("vqa", "vqa_blind"))
    assert where >= 20 and where >= where_blind + 10, (where, where_blind)
    # "What color is the <shape>?" needs the object's colour read off the image (measured: 64.3 vs 20.2 blind).
    colour, colour_blind = (question_type_accuracy(demo_out, name)["what color is the"] for name in ("vqa", "vqa_blind"))
    assert colour >= colour_blind + 20, (colour, colour_blind)


@pytest.mark.slow
def test_reduced_demo_captions_when_asked_for_a_caption(demo_out: Path):
    """The captioning benchmark's prompt gets a caption, not a yes/no: phase 2's mix has caption chats under it
    (measured: CIDEr 134 in this demo; 0.3-7.5 in the full demo before they were added, answers like "No, there is
    not.")."""
    report = json.loads((demo_out / "report.json").read_text())
    assert report["caption_cider"] >= 40, report


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not reached (issue 18's targets): the model answers 'no' to almost every "
                                       "'is there a X' question (POPE F1 0.31; measurements in the README)")
def test_reduced_demo_answers_object_questions_far_better_than_a_coin(demo_out: Path):
    report = json.loads((demo_out / "report.json").read_text())
    assert report["pope_f1"] >= 0.75, report  # answering "yes" to everything already scores F1 0.667
