"""Tests for checkpoint save/load (full and projector-only), missing-file errors, and the atomic writer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlm.checkpoint import ADDED_EMBEDDINGS_FILE, PROJECTOR_FILE
from vlm.fingerprint import FINGERPRINT_FILE
from vlm.model import VisionLanguageModel
from vlm.testing import pad_batch, sample_ids


def _batch(model):
    ids, mask = pad_batch([sample_ids(model, 1, seed=1), sample_ids(model, 2, seed=2)], model.config.pad_token_id, "right")
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(3, 3, 32, 32), image_counts=[1, 2])


def _perturb(model) -> None:
    # trained-looking weights, so a reload that silently re-initialises anything would show
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(torch.randn_like(p))
        for token in model.config.added_token_ids:
            model.llm.get_input_embeddings().weight[token].add_(1.0)


@pytest.mark.parametrize("arch,projector_only", [("llama", False), ("llama", True), ("gpt2", True), ("qwen2", False)])
def test_save_load_gives_identical_logits(tiny, tmp_path: Path, arch: str, projector_only: bool) -> None:
    model = tiny.vlm(arch)
    _perturb(model)
    batch = _batch(model)
    with torch.no_grad():
        expected = model(**batch).logits
    out = model.save(tmp_path / "ckpt", projector_only=projector_only)
    files = sorted(p.name for p in out.iterdir())
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    if projector_only:
        assert files == sorted([ADDED_EMBEDDINGS_FILE, "image_processor.json", PROJECTOR_FILE, "tokenizer", "vlm_config.json",
                                FINGERPRINT_FILE])
        assert json.loads((out / "vlm_config.json").read_text())["llm"] == tiny.llm(arch)
    else:
        assert {"llm", "vision"} <= set(files)
        config = json.loads((out / "vlm_config.json").read_text())
        assert config["llm"] == "./llm" and config["vision"]["spec"] == "hf:./vision"
    loaded = VisionLanguageModel.load(out)
    assert not loaded.training
    with torch.no_grad():
        got = loaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert loaded.config.image_token_id == model.config.image_token_id
    assert loaded.image_processor == model.image_processor


@pytest.mark.parametrize("encoder", ["timm", "open_clip", "siglip"])
def test_save_load_other_backends(tiny, tmp_path: Path, encoder: str) -> None:
    model = tiny.vlm("llama", encoder, projector="avgpool2x_mlp2x_gelu")
    _perturb(model)
    batch = _batch(model)
    model.save(tmp_path / "ckpt")
    (tmp_path / "ckpt").rename(tmp_path / "moved")
    loaded = VisionLanguageModel.load(tmp_path / "moved")
    assert loaded.config.num_image_tokens == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_full_checkpoint_moves_and_resaves(tiny, tmp_path: Path) -> None:
    model = tiny.vlm()
    _perturb(model)
    batch = _batch(model)
    model.save(tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "moved")  # relative ./ paths survive a move
    loaded = VisionLanguageModel.load(tmp_path / "moved")
    loaded.save(tmp_path / "b", projector_only=True)  # references now point at moved/llm
    again = VisionLanguageModel.load(tmp_path / "b")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_missing_files_are_listed(tiny, tmp_path: Path) -> None:
    model = tiny.vlm()
    out = model.save(tmp_path / "ckpt", projector_only=True)
    (out / ADDED_EMBEDDINGS_FILE).unlink()
    (out / PROJECTOR_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['projector.safetensors', 'added_embeddings.safetensors'\]; it holds \['image_processor.json', "
                                                 r"'preprocessing_fingerprint.json', 'tokenizer', 'vlm_config.json'\]"):
        VisionLanguageModel.load(out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VisionLanguageModel.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing \['vlm_config.json'\]"):
        VisionLanguageModel.load(tmp_path / "empty")


def test_projector_only_refuses_trained_vision_blocks(tiny, tmp_path: Path) -> None:
    model = tiny.vlm(unfreeze_last_n=1)
    with pytest.raises(ValueError, match="drop the 1 trained vision blocks"):
        model.save(tmp_path / "ckpt", projector_only=True)
    assert not (tmp_path / "ckpt").exists()
