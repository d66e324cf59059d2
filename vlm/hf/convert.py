"""Export and import, dispatched by kind: anyres models are HF LlavaNext, the others HF Llava."""
from __future__ import annotations

from pathlib import Path

from vlm import fingerprint
from vlm.hf.common import ExportError, model_type
from vlm.hf.llava import export_llava, import_llava
from vlm.hf.llava_next import export_hf_next, import_hf_next
from vlm.model import VisionLanguageModel

__all__ = ["ExportError", "export_hf", "import_hf"]


def export_hf(model: VisionLanguageModel, out_dir: str | Path) -> Path:
    """Write a directory that HF `AutoProcessor` and `LlavaForConditionalGeneration` (anyres:
    `LlavaNextForConditionalGeneration`) `.from_pretrained` load, plus the preprocessing fingerprint (the model's,
    and the exported image processor's as `AutoImageProcessor` loads it) in `fingerprint.FINGERPRINT_FILE`."""
    out = export_hf_next(model, out_dir) if model.config.vision.anyres else export_llava(model, out_dir)
    fingerprint.save(fingerprint.for_export(model, out), out)
    return out


def import_hf(
    source: str | Path,
    out_dir: str | Path,
    template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    torch_dtype: str | None = None,
) -> VisionLanguageModel:
    """Convert a HF Llava (or LlavaNext: anyres) directory into our checkpoint format (full), and return it loaded."""
    source = Path(source)
    if model_type(source) == "llava_next":
        return import_hf_next(source, out_dir, template=template, torch_dtype=torch_dtype)
    return import_llava(source, out_dir, template=template, image_aspect_ratio=image_aspect_ratio,
                        torch_dtype=torch_dtype)
