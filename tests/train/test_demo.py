"""The reduced main job end to end: world, backbones, both phases, benchmarks, chat, report — and re-runs reuse stages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm.cli import main as vlm

REPORT_KEYS = {
    "vqa_accuracy_seen", "vqa_accuracy_heldout", "vqa_accuracy_blind", "vqa_accuracy_prior_baseline", "pope_f1",
    "caption_cider", "mcq_accuracy", "text_only_accuracy", "no_alignment_vqa_accuracy_seen", "wall_seconds",
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
    for stage in ("world", "backbones", "align", "instruct", "instruct_without_alignment", "eval_vqa", "total"):
        assert stages[stage] > 0, stage
    assert (demo_out / "instruct" / "vlm_config.json").is_file()

    assert vlm(["demo", "--profile", "ci", "--out", str(demo_out)]) == 0
    again = json.loads((demo_out / "report.json").read_text())
    assert again["wall_seconds"]["align"] == stages["align"]  # not retrained
    assert again["vqa_accuracy_seen"] == report["vqa_accuracy_seen"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 7 open: in this budget the tiny LLM does not learn to look up a "
                                       "question's object among the image tokens (measurements in the README)")
def test_reduced_demo_learns_from_the_image(demo_out: Path):
    report = json.loads((demo_out / "report.json").read_text())
    # Learning that cannot happen by chance: looking at the image must beat the same model on blank images,
    # and yes/no object questions must be answered far better than a coin (F1 0.5).
    assert report["vqa_accuracy_seen"] >= report["vqa_accuracy_blind"] + 10, report
    assert report["pope_f1"] >= 0.75, report  # answering "yes" to everything already scores F1 0.667
