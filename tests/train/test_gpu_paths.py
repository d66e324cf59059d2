"""GPU-only checks (marked `gpu`, skipped without CUDA): phase-2 overrides honoured on a real GPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_bfloat16_override_loads_bf16_weights_and_is_saved(make_cfg, tmp_path: Path) -> None:
    from train.recipes import build_model, run
    from train.strategies.single import SingleProcessStrategy

    cfg = make_cfg(model={"torch_dtype": "bfloat16"}, precision="bf16", max_steps=1, output_dir=str(tmp_path / "bf16"))
    model = build_model(cfg)
    assert model.dtype == torch.bfloat16 and model.config.torch_dtype == "bfloat16"
    run(cfg, strategy=SingleProcessStrategy("cuda:0"))
    assert json.loads((tmp_path / "bf16" / "vlm_config.json").read_text())["torch_dtype"] == "bfloat16"


def test_flash_attention_override_takes_effect_on_gpu(make_cfg) -> None:
    pytest.importorskip("flash_attn")
    from train.recipes import build_model

    model = build_model(make_cfg(model={"attn_implementation": "flash_attention_2", "torch_dtype": "bfloat16"}))
    assert model.llm.config._attn_implementation == "flash_attention_2"
    assert model.config.attn_implementation == "flash_attention_2"
