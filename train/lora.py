"""LoRA / QLoRA on the LLM through peft, and loading a LoRA run's output (base + adapters)."""
from __future__ import annotations

from pathlib import Path

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


def quantize_llm_4bit(model: nn.Module) -> None:
    """Reload the VLM's LLM in 4-bit NF4 (bitsandbytes) for QLoRA; GPU only."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    check_qlora_available()
    source = model.config.llm
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    embeddings = model.llm.get_input_embeddings().weight.detach().clone()
    llm = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, dtype=torch.bfloat16,
                                               attn_implementation=model.config.attn_implementation,
                                               trust_remote_code=model.config.trust_remote_code,
                                               device_map={"": torch.cuda.current_device()})
    llm.resize_token_embeddings(embeddings.shape[0], mean_resizing=False)
    with torch.no_grad():
        llm.get_input_embeddings().weight.copy_(embeddings.to(llm.get_input_embeddings().weight))
    model.llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)


def apply_lora(model: nn.Module, settings: LoraSettings, qlora: bool = False) -> None:
    """Wrap `model.llm` in a peft model with trainable adapters (base weights frozen by peft)."""
    from peft import get_peft_model

    if qlora:
        quantize_llm_4bit(model)
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
