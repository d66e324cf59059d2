"""eval and chat load bf16 on a GPU by default, float32 on a CPU; half precision on a CPU falls back with a warning."""
from __future__ import annotations

import pytest
import torch

from vlm.dtypes import inference_dtype


def test_auto_is_float32_on_a_cpu() -> None:
    assert inference_dtype(None, "cpu") == inference_dtype("auto", "cpu") == "float32"


def test_auto_is_bf16_on_a_bf16_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_dtype("auto", "cuda") == "bfloat16"
    assert inference_dtype("fp32", "cuda:1") == "float32" and inference_dtype("fp16", "cuda") == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_dtype(None, "cuda") == "float32"


def test_half_on_a_cpu_falls_back_with_the_reason() -> None:
    with pytest.warns(UserWarning, match="bfloat16 on a CPU.*float32"):
        assert inference_dtype("bf16", "cpu") == "float32"
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        inference_dtype("int8", "cpu")


def test_chat_and_eval_take_dtype() -> None:
    import argparse

    from app.chat import register
    from eval.cli import register as register_eval

    parser = argparse.ArgumentParser()
    register(parser)
    assert parser.parse_args(["--model", "m"]).dtype == "auto"
    assert parser.parse_args(["--model", "m", "--dtype", "bf16"]).dtype == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--dtype", "int8"])
    eval_parser = argparse.ArgumentParser()
    register_eval(eval_parser)
    args = eval_parser.parse_args(["run", "--benchmark", "pope", "--model", "m"])
    assert args.dtype == "auto"
    assert eval_parser.parse_args(["run", "--benchmark", "pope", "--model", "m", "--dtype", "fp32"]).dtype == "fp32"


@pytest.mark.parametrize("dtype, expected", [(None, "sdpa"), ("float32", "sdpa"), ("bfloat16", None)])
def test_a_flash_attention_checkpoint_runs_sdpa_in_float32(tiny_vlm_dir, tmp_path, monkeypatch, dtype,
                                                           expected) -> None:
    """flash-attn takes half precision only: eval and chat of a checkpoint saved with flash_attention_2 load it with
    SDPA when they run in float32 (a CPU, `--dtype float32`), and keep flash attention in bf16."""
    import json
    import shutil

    from vlm.loading import load_model_dir
    from vlm.model import VisionLanguageModel

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_vlm_dir, ckpt)
    config = json.loads((ckpt / "vlm_config.json").read_text())
    (ckpt / "vlm_config.json").write_text(json.dumps({**config, "attn_implementation": "flash_attention_2"}))
    seen, real_load = {}, VisionLanguageModel.load

    def load(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.update(kwargs)
        return real_load(tiny_vlm_dir)

    monkeypatch.setattr(VisionLanguageModel, "load", load)
    load_model_dir(ckpt, torch_dtype=dtype)
    assert seen.get("attn_implementation") == expected
