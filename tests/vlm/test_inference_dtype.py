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
