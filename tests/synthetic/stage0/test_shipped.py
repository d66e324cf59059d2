"""The shipped stage-0 backbones: files match the manifest, they load through the ordinary paths, they pass the
text gate, and `vlm pretrain-backbones` with the manifest's config reproduces them in kind."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

from synthetic.generate import SynthConfig, generate_world
from synthetic.stage0.cli import pretrain_backbones
from synthetic.stage0.config import LLMPretrainConfig, ViTPretrainConfig
from synthetic.stage0.shipped import MANIFEST, SHIPPED_DIR, file_hashes, manifest_problems
from synthetic.stage0.text_gate import text_gate
from vision_encoders.config import VisionEncoderConfig
from vlm.model import VisionLanguageModel

ARCHITECTURE = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def manifest() -> dict:
    return json.loads((SHIPPED_DIR / MANIFEST).read_text())


def test_files_match_the_manifest() -> None:
    assert manifest_problems(SHIPPED_DIR) == []
    assert {"llm/model.safetensors", "vit/model.safetensors"} <= set(manifest()["files"])
    assert not list(SHIPPED_DIR.rglob("*.bin")) and not list(SHIPPED_DIR.rglob("*.pt"))  # safetensors only


def test_a_changed_file_is_reported(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "backbones"
    shutil.copytree(SHIPPED_DIR, copy)
    (copy / "llm" / "config.json").write_text("{}")
    (copy / "extra.txt").write_text("x")
    assert manifest_problems(copy) == ["extra.txt: not in the manifest", "llm/config.json: sha256 differs from the manifest"]


def test_manifest_config_is_the_command_default() -> None:
    """`vlm pretrain-backbones --world W` with default flags trains what ships (steps and all)."""
    m = manifest()
    as_stored = json.loads(json.dumps({"llm": asdict(LLMPretrainConfig()), "vit": asdict(ViTPretrainConfig())}))
    assert m["llm_config"] == as_stored["llm"] and m["vit_config"] == as_stored["vit"]
    assert m["command"].startswith("vlm pretrain-backbones") and m["world"]["seed"] == 0
    assert set(m["train_seconds"]) == {"llm", "vit"}


def test_they_load_through_the_ordinary_paths_and_build_the_demo_model() -> None:
    llm = AutoModelForCausalLM.from_pretrained(str(SHIPPED_DIR / "llm"))
    tok = AutoTokenizer.from_pretrained(str(SHIPPED_DIR / "llm"))
    assert llm.config.vocab_size == len(tok) and tok.convert_tokens_to_ids("<image>") == 4
    vit = CLIPVisionModel.from_pretrained(str(SHIPPED_DIR / "vit"))
    assert vit.config.image_size == 72 and vit.config.patch_size == 24
    model = VisionLanguageModel.build(VisionEncoderConfig(spec=f"hf:{SHIPPED_DIR / 'vit'}", select_layer=-2),
                                      "mlp2x_gelu", str(SHIPPED_DIR / "llm"), "vicuna_v1")
    assert model.config.num_image_tokens == 9  # one token per cell, where the LLM read the sheet's nine cells


def _remeasured_gate() -> dict[str, float]:
    torch.set_num_threads(1)
    llm = AutoModelForCausalLM.from_pretrained(str(SHIPPED_DIR / "llm"))
    tok = AutoTokenizer.from_pretrained(str(SHIPPED_DIR / "llm"))
    return text_gate(llm, tok, seed=7, num_scenes=60)  # fresh scenes, not the manifest's


@pytest.mark.slow
def test_the_shipped_llm_reads_sheets_as_its_manifest_says() -> None:
    """Re-measured here on fresh scenes: the recorded gate is real, and what it learned is far above chance."""
    recorded = manifest()["metrics"]["llm"]["text_gate"]
    scores = _remeasured_gate()
    assert abs(scores["overall"] - recorded["overall"]) <= 10, (scores, recorded)  # 180 questions of sampling noise
    assert scores["count_all"] >= 85 and scores["count_shape"] >= 85, scores  # counts (a guesser: ~30-50)
    assert scores["color_of_shape"] >= 90 and scores["shape_of_color"] >= 90, scores  # looks attributes up (~17)
    assert scores["where"] >= 90 and scores["size"] >= 90 and scores["exists"] >= 85, scores  # measured 95-100


GATED_KINDS = ("color_of_shape", "shape_of_color", "where", "count_all", "count_shape", "count_color", "exists")


def test_the_shipped_llm_passes_the_text_gate() -> None:
    """Issue 18's gate: colour, shape, position, count and existence questions on unseen sheets at >= 95 % (the
    manifest's 300 scenes; relations, not in the gate, are the weak kind: 72 %)."""
    gate = manifest()["metrics"]["llm"]["text_gate"]
    assert gate["overall"] >= 95 and all(gate[kind] >= 95 for kind in GATED_KINDS), gate


@pytest.mark.slow
def test_the_command_reproduces_them_in_kind(tmp_path: Path) -> None:
    """A short run of the manifest's config on a small world of the same image size: same files, same shapes."""
    m = manifest()
    world = tmp_path / "world"
    generate_world(SynthConfig(out=str(world), seed=0, num_train=48, num_test=16, num_workers=1, pope_images=4,
                               scienceqa_images=2, scienceqa_text=1, text_eval=4, text_chats=20, corpus_scenes=60,
                               vocab_size=m["world"]["vocab_size"]))
    llm = LLMPretrainConfig(**{**m["llm_config"], "steps": 2, "batch_tokens": 1024, "warmup_steps": 1, "lesson_steps": 1,
                               "lookup_batch": 4, "gate_scenes": 2})
    vit = ViTPretrainConfig(**{**m["vit_config"], "steps": 2, "batch_size": 8, "warmup_steps": 1})
    torch.set_num_threads(1)
    out = tmp_path / "backbones"
    pretrain_backbones(world, out, llm, vit)
    shipped = {name for name in file_hashes(SHIPPED_DIR) if not name.endswith("stage0.json")}
    assert {name for name in file_hashes(out) if not name.endswith("stage0.json")} == shipped
    for part in ("llm", "vit"):
        ours, theirs = (json.loads((root / part / "config.json").read_text()) for root in (out, SHIPPED_DIR))
        if part == "vit":
            ours, theirs = ours["vision_config"], theirs["vision_config"]
        assert {k: ours[k] for k in ARCHITECTURE} == {k: theirs[k] for k in ARCHITECTURE}, part
