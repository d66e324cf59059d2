"""Tests for `vlm build`, `vlm export-hf` and `vlm import-hf` through the real CLI dispatcher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.cli import main
from vlm.model import VisionLanguageModel
from vlm.testing import sample_ids


def test_build_export_import(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, hf, back = tmp_path / "ckpt", tmp_path / "hf", tmp_path / "back"
    assert main(["build", "--vision", tiny.vision("clip"), "--projector", "mlp2x_gelu", "--llm", tiny.llm("qwen2"),
                 "--template", "vicuna_v1", "--out", str(ckpt), "--select-layer", "-1",
                 "--select-feature", "cls_patch", "--image-aspect-ratio", "crop"]) == 0
    assert "T=17 -> K=17 image tokens" in capsys.readouterr().out
    config = json.loads((ckpt / "vlm_config.json").read_text())
    assert config["vision"]["select_layer"] == -1 and config["vision"]["image_aspect_ratio"] == "crop"
    assert main(["export-hf", str(ckpt), "--out", str(hf)]) == 0
    assert json.loads((hf / "config.json").read_text())["vision_feature_select_strategy"] == "full"
    assert main(["import-hf", str(hf), "--out", str(back), "--template", "vicuna_v1"]) == 0
    a, b = VisionLanguageModel.load(ckpt), VisionLanguageModel.load(back)
    ids = sample_ids(a, 1)[None]
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(ids, pixel_values=pixels).logits, a(ids, pixel_values=pixels).logits, rtol=0, atol=0)


def test_export_refusal_is_a_clear_exit(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ckpt"
    assert main(["build", "--vision", tiny.vision("open_clip"), "--projector", "pixel_shuffle2x_mlp2x_gelu",
                 "--llm", tiny.llm("llama"), "--template", "vicuna_v1", "--out", str(ckpt), "--projector-only"]) == 0
    assert "T=16 -> K=4" in capsys.readouterr().out
    assert main(["export-hf", str(ckpt), "--out", str(tmp_path / "hf")]) == 2
    assert "cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_unknown_projector_is_rejected(tiny, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown projector 'mlp2x_gelu_foo'; known: identity, linear"):
        main(["build", "--vision", tiny.vision("clip"), "--projector", "mlp2x_gelu_foo", "--llm", tiny.llm("llama"),
              "--template", "vicuna_v1", "--out", str(tmp_path / "x")])


def test_anyres_build_export_import_through_the_cli(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, hf, back = tmp_path / "ckpt", tmp_path / "hf", tmp_path / "back"
    assert main(["build", "--vision", tiny.vision("clip"), "--llm", tiny.llm("llama"), "--template", "vicuna_v1",
                 "--out", str(ckpt), "--image-aspect-ratio", "anyres", "--image-grid-pinpoints", "[[32, 64], [64, 32]]"]) == 0
    assert json.loads((ckpt / "vlm_config.json").read_text())["vision"]["image_grid_pinpoints"] == [[32, 64], [64, 32]]
    assert main(["export-hf", str(ckpt), "--out", str(hf)]) == 0
    assert json.loads((hf / "config.json").read_text())["model_type"] == "llava_next"
    assert main(["import-hf", str(hf), "--out", str(back), "--template", "vicuna_v1"]) == 0
    assert VisionLanguageModel.load(back).image_processor.grid_pinpoints == [[32, 64], [64, 32]]
    capsys.readouterr()
    assert main(["build", "--vision", tiny.vision("clip"), "--llm", tiny.llm("llama"), "--template", "vicuna_v1",
                 "--out", str(tmp_path / "x"), "--image-aspect-ratio", "anyres"]) == 2
    assert "needs image_grid_pinpoints" in capsys.readouterr().err
