"""Tests for train.lora and `vlm merge-lora`: adapters train, merged logits equal unmerged, QLoRA refuses CPU."""
from __future__ import annotations

import pytest
import torch

from train.config import LoraSettings
from train.lora import ADAPTER_DIR, check_qlora_available, load_lora_model
from train.merge_lora import merge_directory
from train.recipes import run


def test_lora_run_then_merge_matches_unmerged(make_cfg, tmp_path) -> None:
    from vlm.model import VisionLanguageModel

    cfg = make_cfg(llm_mode="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}, optim={"lr": 5e-2, "projector_lr": 1e-3},
                   output_dir=str(tmp_path / "lora"), max_steps=2)
    result = run(cfg)
    assert result.steps == 2
    assert (tmp_path / "lora" / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    unmerged = load_lora_model(tmp_path / "lora")
    unmerged.eval()
    merge_directory(str(tmp_path / "lora"), str(tmp_path / "merged"))
    merged = VisionLanguageModel.load(tmp_path / "merged")
    merged.eval()
    base = VisionLanguageModel.load(cfg.model.init_from)
    base.eval()
    k = merged.config.num_image_tokens
    ids = torch.tensor([[1] + [merged.config.image_token_id] * k + [10, 11, 12, 13]])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = unmerged(input_ids=ids, pixel_values=pixels).logits
        b = merged(input_ids=ids, pixel_values=pixels).logits
        c = base(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - c).abs().max() > 1e-3, "LoRA training must have changed the model"


def test_lora_targets_all_linear_layers_but_the_head(make_cfg) -> None:
    from train.recipes import build_model, prepare_model

    cfg = make_cfg(llm_mode="lora", lora={"r": 2, "alpha": 4})
    model = build_model(cfg)
    counts = prepare_model(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith("projector.") or "lora_" in n for n in trainable)
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert counts["llm"] > 0


def test_qlora_refuses_cpu_clearly() -> None:
    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        check_qlora_available()


def test_lora_settings_defaults_follow_llava() -> None:
    s = LoraSettings()
    assert (s.r, s.alpha) == (128, 256)
