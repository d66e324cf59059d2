"""LoRA / QLoRA on the LLM through peft, and loading a LoRA run's output (base + adapters)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.config import LoraSettings

from vlm.checkpoint import LORA_ADAPTER_DIR as ADAPTER_DIR  # one name for the writer and the reader


def check_qlora_available() -> None:
    """QLoRA needs CUDA and bitsandbytes; say so plainly instead of failing deep inside peft."""
    if not torch.cuda.is_available():
        raise RuntimeError("llm_mode=qlora needs a CUDA GPU and bitsandbytes (4-bit weights); this machine has no "
                           "GPU: use llm_mode=lora (same adapters, fp32 base) on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"llm_mode=qlora needs bitsandbytes (pip install 'vlm-trainer[gpu]'): {err}") from None


def lora_config(settings: LoraSettings):  # noqa: ANN201 - peft.LoraConfig
    from peft import LoraConfig

    # "all-linear": peft's own rule, every linear layer except the output head.
    targets = settings.target_modules if settings.target_modules else "all-linear"
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def qlora_llm_kwargs(init_from: str | None = None) -> dict[str, Any]:
    """`from_pretrained` kwargs that load the LLM straight from disk into 4-bit NF4 on this process's GPU.

    Given to `VisionLanguageModel.load(init_from, llm_kwargs=...)` (or `build`), so the LLM quantized is the one
    `init_from` holds (its `llm/` weights, or the base it refers to plus its saved rows of the added tokens),
    loaded once, never first in fp32. Embeddings and the LM head stay unquantized (transformers keeps the
    output embeddings out of 4-bit), so the added tokens' input and output rows are restored as for any load.
    GPU only: on a CPU, or without bitsandbytes, this raises with the reason (`train.rules` refused adapters in
    `init_from` before).
    """
    check_qlora_available()
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    # torch.cuda.current_device(): the strategy (built before the model) has set this rank's GPU.
    return {"quantization_config": quant, "dtype": torch.bfloat16, "device_map": {"": torch.cuda.current_device()}}


def prepare_4bit_llm(model: nn.Module) -> None:
    """peft's k-bit preparation of an LLM loaded by `qlora_llm_kwargs`: base frozen, its non-4-bit parameters
    (norms, embeddings, LM head) in fp32. The projector is not touched: it trains in its own dtype (fp32
    unless `model.torch_dtype` says otherwise) under bf16 autocast, as with `lora`."""
    from peft import prepare_model_for_kbit_training

    if not getattr(model.llm, "is_loaded_in_4bit", False):
        raise RuntimeError("llm_mode=qlora: the LLM is not loaded in 4-bit; load it with "
                           "VisionLanguageModel.load(..., llm_kwargs=qlora_llm_kwargs(...)) (train.recipes.build_model "
                           "does) instead of quantizing an fp32 copy")
    model.llm = prepare_model_for_kbit_training(model.llm, use_gradient_checkpointing=False)


def apply_lora(model: nn.Module, settings: LoraSettings, qlora: bool = False) -> None:
    """Wrap `model.llm` in a peft model with trainable adapters (base weights frozen by peft)."""
    from peft import get_peft_model

    if qlora:
        prepare_4bit_llm(model)
    model.llm = get_peft_model(model.llm, lora_config(settings))


def is_lora(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model.llm, PeftModel)


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """peft `save_pretrained` (safetensors) of the LLM's adapters into `directory/lora_adapter`."""
    path = Path(directory) / ADAPTER_DIR
    model.llm.save_pretrained(str(path), safe_serialization=True)
    return path


def load_lora_model(directory: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """A LoRA run's output: `VisionLanguageModel.load` (base + trained projector) with the adapters attached."""
    from vlm.model import VisionLanguageModel

    directory = Path(directory)
    if not (directory / ADAPTER_DIR).is_dir():
        raise FileNotFoundError(f"{directory} has no {ADAPTER_DIR}/: not the output of an llm_mode=lora run")
    return VisionLanguageModel.load(directory, device=device, lora="attach")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; `model.llm` becomes a plain transformers model again."""
    if not is_lora(model):
        raise ValueError("the model has no LoRA adapters to merge")
    model.llm = model.llm.merge_and_unload()
    return model
