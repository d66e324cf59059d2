"""Load whatever model directory a user points at: our checkpoint, or a HF Llava directory (imported on the fly)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from vlm import fingerprint
from vlm.config import CONFIG_NAME, VLMConfig
from vlm.model import VisionLanguageModel


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


def load_model_dir(
    directory: str | Path, device: str | None = None, torch_dtype: str | None = None, hf_template: str = "vicuna_v1",
    strict_fingerprint: bool = False,
) -> VisionLanguageModel:
    """Our checkpoint (`CONFIG_NAME`), or a HF Llava directory imported into a temporary checkpoint.

    The model's preprocessing fingerprint is recomputed and its drift against the one the directory stores is
    printed (`FingerprintDrift` with `strict_fingerprint`); it is kept as `model.preprocessing_fingerprint`."""
    directory = Path(directory)
    check_model_dir(directory)
    if (directory / CONFIG_NAME).is_file():
        saved = VLMConfig.load(directory)
        overrides = {}
        if saved.attn_implementation.startswith("flash_attention") and \
                (torch_dtype or saved.torch_dtype or "float32") == "float32":
            overrides["attn_implementation"] = "sdpa"  # flash kernels take half precision only
        model = VisionLanguageModel.load(directory, device=device, torch_dtype=torch_dtype, **overrides)
    elif is_hf_llava(directory):
        from vlm.hf.convert import import_hf

        # import_hf is the tested HF -> ours mapping (strict, by parameter name); the copy lives in a temp dir
        staging = Path(tempfile.mkdtemp(prefix="vlm-hf-import-"))
        model = import_hf(directory, staging / "ckpt", template=hf_template, torch_dtype=torch_dtype)
        model = model.to(device) if device else model
    model.preprocessing_fingerprint = check_fingerprint(model, directory, strict_fingerprint)
    return model.eval()


def check_fingerprint(model: VisionLanguageModel, directory: Path, strict: bool = False) -> dict:
    """The loaded model's fingerprint, its drift against `directory`'s reported; a HF directory's own image
    processor (as `AutoImageProcessor` loads it here) is recomputed too when the directory stores one."""
    stored = fingerprint.load(directory)
    current = fingerprint.compute(model)
    if stored is not None and "hf_image_processor" in stored.get("components", {}):
        components = dict(current["components"])
        components["hf_image_processor"] = fingerprint.hf_image_processor_component(directory)
        current = fingerprint.assemble(components)
    fingerprint.report(stored, current, str(directory), strict=strict)
    return current
