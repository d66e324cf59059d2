"""What HF Llava and LlavaNext conversions share: parameter-name prefixes, the export checks, and the import's
staging, opening and saving as our checkpoint."""
from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)

from vision_encoders.config import VisionEncoderConfig
from vision_encoders.hf_encoder import HFVisionEncoder
from vlm.atomic import atomic_directory
from vlm.config import VLMConfig
from vlm.dtypes import resolve_dtype
from vlm.model import VisionLanguageModel
from vlm.tokens import add_special_tokens, resize_for_tokenizer

VISION_PREFIX = "model.vision_tower."
PROJECTOR_PREFIX = "model.multi_modal_projector."
LANGUAGE_PREFIX = "model.language_model."


class ExportError(ValueError):
    """The model holds a part HF Llava cannot express."""


def check_exportable(model: VisionLanguageModel) -> None:
    """Raise `ExportError` saying which part HF Llava cannot express, and why."""
    if not isinstance(model.vision_encoder, HFVisionEncoder):
        raise ExportError(
            f"vision encoder {model.config.vision.spec!r} cannot be exported: HF Llava's vision tower must be a "
            "transformers CLIP or SigLIP model (spec 'hf:...'); timm and open_clip towers have no Llava equivalent"
        )
    if not model.projector.hf_exportable:
        raise ExportError(
            f"projector {model.config.projector!r} cannot be exported: HF Llava's projector is "
            "linear_1 -> gelu -> linear_2 with bias, i.e. only 'mlp2x_gelu'"
        )
    encoder = model.vision_encoder
    if encoder.image_size != int(encoder.hf_config.image_size):
        raise ExportError(
            f"vision encoder runs at {encoder.image_size}px with interpolated positions, but HF Llava runs the tower at "
            f"its native {encoder.hf_config.image_size}px"
        )


def _language_key(llm: PreTrainedModel, key: str) -> str:
    prefix = llm.base_model_prefix + "."
    return LANGUAGE_PREFIX + key[len(prefix):] if key.startswith(prefix) else key


def ties_as_llava(llm: PreTrainedModel) -> bool:
    """Whether HF Llava can keep the LLM's tied embeddings (its tie targets `language_model.embed_tokens`)."""
    output = llm.get_output_embeddings()
    tied = output is not None and output.weight is llm.get_input_embeddings().weight
    return tied and hasattr(llm.base_model, "embed_tokens")


def llava_state_dict(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under `LlavaForConditionalGeneration`'s own parameter names."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.vision_encoder.hf_model.state_dict().items():
        state[VISION_PREFIX + key] = value
    for key, value in model.projector.state_dict().items():
        state[PROJECTOR_PREFIX + key] = value
    for key, value in model.llm.state_dict().items():
        state[_language_key(model.llm, key)] = value
    return state


def _split_llm_state(llava: LlavaForConditionalGeneration, llm: PreTrainedModel) -> dict[str, torch.Tensor]:
    base = llm.base_model_prefix + "."
    state = {}
    for key, value in llava.state_dict().items():
        if key.startswith(LANGUAGE_PREFIX):
            state[base + key[len(LANGUAGE_PREFIX):]] = value
        elif not key.startswith((VISION_PREFIX, PROJECTOR_PREFIX)) and key != "model.image_newline":  # LlavaNext's
            state[key] = value
    return state


def _check_importable(config: LlavaConfig, source: Path) -> None:
    if not isinstance(config.vision_feature_layer, int):
        raise ExportError(f"{source}: vision_feature_layer {config.vision_feature_layer} (several layers) is not supported")
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise ExportError(
            f"{source}: projector act={config.projector_hidden_act!r}, bias={config.multimodal_projector_bias}; "
            "only gelu with bias maps onto 'mlp2x_gelu'"
        )


def model_type(source: Path) -> str | None:
    """The `model_type` of a HF directory's config.json (None if unreadable)."""
    try:
        return json.loads((source / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def write_hf(hf_model: Any, processor: Any, out_dir: str | Path) -> Path:
    """An exported model and its processor, written atomically as one `from_pretrained` directory."""
    with atomic_directory(out_dir) as tmp:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return Path(out_dir)


def open_hf(model_class: Any, source: Path, torch_dtype: str | None) -> tuple[Any, Any, torch.dtype]:
    """A HF Llava-family model loaded from `source` (checked importable), its tokenizer and the load dtype."""
    dtype = resolve_dtype(torch_dtype) or torch.float32
    hf_model = model_class.from_pretrained(source, dtype=dtype)
    _check_importable(hf_model.config, source)
    return hf_model, AutoTokenizer.from_pretrained(source), dtype


@contextlib.contextmanager
def staging_next_to(out_dir: str | Path) -> Iterator[Path]:
    """A temporary directory beside `out_dir` (same file system) for the parts of an import."""
    parent = Path(out_dir).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=parent) as staging:
        yield Path(staging)


def unpack_hf_parts(hf_model: Any, source: Path, staging_dir: Path, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """From a loaded HF Llava / LlavaNext model: its vision tower (and the source's image processor) saved under
    `staging_dir/vision`, its LLM rebuilt from `text_config` with the model's weights (strict), its projector's
    weights."""
    config = hf_model.config
    hf_model.model.vision_tower.save_pretrained(staging_dir / "vision", safe_serialization=True)
    try:
        AutoProcessor.from_pretrained(source).image_processor.save_pretrained(staging_dir / "vision")
    except (OSError, ValueError):
        pass  # no processor saved: the encoder falls back to its family's defaults
    llm = AutoModelForCausalLM.from_config(config.text_config, dtype=dtype)
    llm.load_state_dict(_split_llm_state(hf_model, llm), strict=True)
    if config.tie_word_embeddings and llm.get_output_embeddings() is not None:
        llm.tie_weights()
    return llm, {k: v.clone() for k, v in hf_model.model.multi_modal_projector.state_dict().items()}


@dataclass
class ImportedParts:
    """What an import assembled, ready to become our checkpoint."""

    source: Path
    template: str
    torch_dtype: str | None
    dtype: torch.dtype
    hf_config: Any
    tokenizer: Any
    vision: VisionEncoderConfig
    encoder: Any
    projector: Any
    llm: Any
    image_processor: Any


def save_imported(out_dir: str | Path, parts: ImportedParts) -> None:
    """Add our image (and pad) tokens to the imported tokenizer and LLM, and save the parts as our full checkpoint."""
    tokenizer, llm, encoder, projector = parts.tokenizer, parts.llm, parts.encoder, parts.projector
    image_token = tokenizer.convert_ids_to_tokens(parts.hf_config.image_token_id)
    added_ids = resize_for_tokenizer(llm, tokenizer, add_special_tokens(tokenizer, image_token))
    vlm_config = VLMConfig(
        vision=parts.vision, projector="mlp2x_gelu", llm=str(parts.source), template=parts.template,
        image_token=image_token, image_token_id=parts.hf_config.image_token_id, pad_token_id=int(tokenizer.pad_token_id),
        num_image_tokens=projector.output_tokens(encoder.num_tokens), vision_num_tokens=encoder.num_tokens,
        torch_dtype=parts.torch_dtype, added_token_ids=added_ids,
    )
    model = VisionLanguageModel(vlm_config, encoder, projector.to(parts.dtype), llm, tokenizer, parts.image_processor)
    model.sync_llm_token_ids()
    model.save(out_dir)
