"""Phase 2 over `init_from`: attn_implementation, trust_remote_code and torch_dtype from the training config
take effect (the LLM is loaded with them) and the saved vlm_config.json records what was used."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import vlm.assembly


def test_attn_implementation_and_dtype_override_take_effect_and_are_saved(make_cfg, tiny_world, tmp_path: Path) -> None:
    from train.recipes import build_model, run

    inherited = build_model(make_cfg())
    assert inherited.llm.config._attn_implementation == "sdpa"  # what the tiny world's checkpoint was saved with
    cfg = make_cfg(model={"attn_implementation": "eager", "torch_dtype": "float32"}, max_steps=1,
                   output_dir=str(tmp_path / "eager"))
    model = build_model(cfg)
    assert model.llm.config._attn_implementation == "eager"
    assert model.config.attn_implementation == "eager"
    run(cfg)
    saved = json.loads((tmp_path / "eager" / "vlm_config.json").read_text())
    assert (saved["attn_implementation"], saved["torch_dtype"]) == ("eager", "float32")
    # The next phase without an override inherits what this one used.
    again = build_model(make_cfg(model={"init_from": str(tmp_path / "eager")}))
    assert again.llm.config._attn_implementation == "eager"
    back = build_model(make_cfg(model={"init_from": str(tmp_path / "eager"), "attn_implementation": "sdpa"}))
    assert back.llm.config._attn_implementation == "sdpa"


def test_trust_remote_code_override_reaches_every_from_pretrained(make_cfg, monkeypatch) -> None:
    from train.recipes import build_model

    seen: list[tuple[str, bool]] = []
    real_llm, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def llm_spy(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(("llm", kwargs["trust_remote_code"]))
        return real_llm(path, **kwargs)

    def tok_spy(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(("tokenizer", kwargs["trust_remote_code"]))
        return real_tok(path, **kwargs)

    monkeypatch.setattr(vlm.assembly.AutoModelForCausalLM, "from_pretrained", llm_spy)
    monkeypatch.setattr(vlm.assembly.AutoTokenizer, "from_pretrained", tok_spy)
    model = build_model(make_cfg(model={"trust_remote_code": True}))
    assert seen == [("llm", True), ("tokenizer", True)]
    assert model.config.trust_remote_code is True
    seen.clear()
    build_model(make_cfg())
    assert seen == [("llm", False), ("tokenizer", False)]  # null: the checkpoint's own (False)


def test_half_precision_override_on_cpu_records_the_float32_that_was_used(make_cfg) -> None:
    import torch

    from train.recipes import build_model

    if torch.cuda.is_available():
        pytest.skip("a GPU honours bfloat16")
    with pytest.warns(UserWarning, match="needs a GPU.*float32"):
        model = build_model(make_cfg(model={"torch_dtype": "bfloat16"}))
    assert model.dtype == torch.float32 and model.config.torch_dtype == "float32"
