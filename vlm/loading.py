"""Load whatever model directory a user points at: our checkpoint, or a HF Llava directory (imported on the fly)."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch

from vlm.config import CONFIG_NAME, DTYPE_ALIASES
from vlm.model import DTYPES, VisionLanguageModel


class NotAModelError(ValueError):
    """The directory holds neither our checkpoint nor a HF Llava model."""


def is_hf_llava(directory: Path) -> bool:
    config_path = directory / "config.json"
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text()).get("model_type") in ("llava", "llava_next")
    except json.JSONDecodeError:
        return False


def check_model_dir(directory: str | Path) -> None:
    """Raise NotAModelError unless `directory` holds our checkpoint or a HF Llava model (cheap: reads configs only)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotAModelError(f"model directory not found: {directory}")
    if not (directory / CONFIG_NAME).is_file() and not is_hf_llava(directory):
        raise NotAModelError(
            f"{directory} is not a model directory: expected {CONFIG_NAME} (this trainer) "
            "or a config.json with model_type 'llava' or 'llava_next' (HF Llava, LlavaNext)"
        )


def inference_dtype(requested: str | None, device: str | torch.device) -> str:
    """The dtype eval and chat load in: `auto` (or None) is bfloat16 on a CUDA GPU that supports it, else
    float32; half precision asked for on a CPU falls back to float32 with a warning saying why."""
    device = torch.device(device)
    name = (requested or "auto").removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name == "auto":
        on_gpu = device.type == "cuda" and torch.cuda.is_available()
        return "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; known: auto, {', '.join(sorted(DTYPES))} (or bf16, fp16, fp32)")
    if name != "float32" and device.type == "cpu":
        warnings.warn(f"dtype {name} on a CPU runs at under 1 GFLOP/s; loading in float32 instead", stacklevel=2)
        return "float32"
    return name


def load_model_dir(
    directory: str | Path, device: str | None = None, torch_dtype: str | None = None, hf_template: str = "vicuna_v1"
) -> VisionLanguageModel:
    """Our checkpoint (`CONFIG_NAME`), or a HF Llava directory imported into a temporary checkpoint."""
    directory = Path(directory)
    check_model_dir(directory)
    if (directory / CONFIG_NAME).is_file():
        model = VisionLanguageModel.load(directory, device=device, torch_dtype=torch_dtype)
    elif is_hf_llava(directory):
        from vlm.hf_llava import import_hf

        # import_hf is the tested HF -> ours mapping (strict, by parameter name); the copy lives in a temp dir
        staging = Path(tempfile.mkdtemp(prefix="vlm-hf-import-"))
        model = import_hf(directory, staging / "ckpt", template=hf_template, torch_dtype=torch_dtype)
        model = model.to(device) if device else model
    return model.eval()
