"""The reduced main job end to end: world, backbones, both phases, benchmarks, chat — and it must have learned."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm.cli import main as vlm


@pytest.mark.slow
def test_reduced_demo_learns_from_the_image(tmp_path: Path):
    out = tmp_path / "demo"
    assert vlm(["demo", "--profile", "ci", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    expected_keys = {
        "vqa_accuracy_seen", "vqa_accuracy_heldout", "vqa_accuracy_blind", "pope_f1", "caption_cider",
        "mcq_accuracy", "text_only_accuracy", "no_alignment_vqa_accuracy_seen", "wall_seconds",
    }
    assert expected_keys <= set(report)
    # Learning that cannot happen by chance: looking at the image must beat the same model on blank images,
    # and yes/no object questions must be answered far better than a coin (F1 0.5 or below).
    assert report["vqa_accuracy_seen"] >= report["vqa_accuracy_blind"] + 10, report
    assert report["pope_f1"] >= 0.65, report
    assert report["wall_seconds"]["total"] > 0

    # A re-run reuses every finished stage instead of training again.
    assert vlm(["demo", "--profile", "ci", "--out", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["wall_seconds"]["align"] == report["wall_seconds"]["align"]
    assert again["vqa_accuracy_seen"] == report["vqa_accuracy_seen"]
