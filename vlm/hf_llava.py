"""Export to and import from HF `LlavaForConditionalGeneration` directories (weights mapped by name, strict)."""
from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)

from transformers.initialization import no_init_weights

from projectors.registry import build_projector
from vision_encoders.config import VisionEncoderConfig
from vision_encoders.hf_encoder import HFVisionEncoder
from vision_encoders.registry import load_vision_encoder
from vlm.config import VLMConfig
from vlm.atomic import atomic_directory
from vlm.model import VisionLanguageModel, resolve_dtype
from vlm.tokens import add_special_tokens, resize_for_tokenizer, unused_rows

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


def _ties_as_llava(llm: PreTrainedModel) -> bool:
    """Whether HF Llava can keep the LLM's tied embeddings (its tie targets `language_model.embed_tokens`)."""
    output = llm.get_output_embeddings()
    tied = output is not None and output.weight is llm.get_input_embeddings().weight
    return tied and hasattr(llm.base_model, "embed_tokens")


def llava_config(model: VisionLanguageModel) -> LlavaConfig:
    encoder = model.vision_encoder
    text_config = copy.deepcopy(model.llm.config)
    tie = _ties_as_llava(model.llm)
    text_config.tie_word_embeddings = tie
    text_config.vocab_size = model.llm.get_input_embeddings().weight.shape[0]
    keep_all = model.config.vision.select_feature == "cls_patch" or not encoder.has_cls_token
    return LlavaConfig(
        vision_config=copy.deepcopy(encoder.hf_config),
        text_config=text_config,
        image_token_id=model.config.image_token_id,
        vision_feature_layer=model.config.vision.select_layer,
        vision_feature_select_strategy="full" if keep_all else "default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_seq_length=model.config.num_image_tokens,
        tie_word_embeddings=tie,
        pad_token_id=model.config.pad_token_id,
    )


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


def to_llava(model: VisionLanguageModel) -> LlavaForConditionalGeneration:
    """An in-memory `LlavaForConditionalGeneration` with exactly our weights (loaded with strict=True)."""
    check_exportable(model)
    config = llava_config(model)
    dtype = model.dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():  # every weight is overwritten below; random init of a 7B model takes minutes
            llava = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    if config.tie_word_embeddings:
        llava.tie_weights()  # no_init_weights also skipped the tying
    llava.load_state_dict(llava_state_dict(model), strict=True)
    llava.generation_config.pad_token_id = model.config.pad_token_id
    llava.generation_config.eos_token_id = model.tokenizer.eos_token_id
    llava.generation_config.suppress_tokens = unused_rows(model.llm, model.tokenizer) or None
    return llava.eval()


def hf_image_processor(model: VisionLanguageModel):
    """The transformers (PIL backend) processor closest to ours; `pad` has no HF equivalent and becomes a resize."""
    ours = model.image_processor
    side = ours.output_size
    common = dict(image_mean=list(ours.mean), image_std=list(ours.std), rescale_factor=ours.rescale,
                  resample=ours._filter())
    if isinstance(model.vision_encoder.hf_model, SiglipVisionModel):
        return SiglipImageProcessorPil(size={"height": side, "width": side}, **common)
    if ours.aspect_ratio == "crop":
        return CLIPImageProcessorPil(size={"shortest_edge": ours.size}, crop_size={"height": side, "width": side},
                                     do_center_crop=True, **common)
    return CLIPImageProcessorPil(size={"height": side, "width": side}, crop_size={"height": side, "width": side},
                                 do_center_crop=False, **common)


def llava_processor(model: VisionLanguageModel) -> LlavaProcessor:
    from conversation.templates import export_chat_template

    config = llava_config(model)
    return LlavaProcessor(
        image_processor=hf_image_processor(model),
        tokenizer=model.tokenizer,
        patch_size=int(model.vision_encoder.hf_config.patch_size),
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=export_chat_template(model.config.template),
        image_token=model.config.image_token,
        num_additional_image_tokens=1 if model.vision_encoder.has_cls_token else 0,
    )


def export_hf(model: VisionLanguageModel, out_dir: str | Path) -> Path:
    """Write a directory that `LlavaForConditionalGeneration` and `AutoProcessor` `.from_pretrained` load.

    anyres models are written as `LlavaNextForConditionalGeneration` + `LlavaNextProcessor` instead.
    """
    if model.config.vision.anyres:
        from vlm.hf_llava_next import export_hf_next

        return export_hf_next(model, out_dir)
    check_exportable(model)
    if model.image_processor.aspect_ratio == "pad":
        warnings.warn(
            "HF image processors cannot pad to square (image_aspect_ratio='pad'); the exported processor resizes "
            "to a square instead, so non-square images are preprocessed differently there", stacklevel=2,
        )
    llava = to_llava(model)
    processor = llava_processor(model)
    with atomic_directory(out_dir) as tmp:
        llava.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return Path(out_dir)


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


def _model_type(source: Path) -> str | None:
    import json

    try:
        return json.loads((source / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def import_hf(
    source: str | Path,
    out_dir: str | Path,
    template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    torch_dtype: str | None = None,
) -> VisionLanguageModel:
    """Convert a HF Llava (or LlavaNext: anyres) directory into our checkpoint format (full), and return it loaded."""
    source = Path(source)
    if _model_type(source) == "llava_next":
        from vlm.hf_llava_next import import_hf_next

        return import_hf_next(source, out_dir, template=template, torch_dtype=torch_dtype)
    llava, tokenizer, dtype = open_hf(LlavaForConditionalGeneration, source, torch_dtype)
    config = llava.config
    with staging_next_to(out_dir) as staging_dir:
        llm, projector_state = unpack_hf_parts(llava, source, staging_dir, dtype)
        del llava
        strategy_keeps_cls = config.vision_feature_select_strategy == "full"
        vision = VisionEncoderConfig(
            spec=f"hf:{staging_dir / 'vision'}", select_layer=config.vision_feature_layer,
            select_feature="cls_patch" if strategy_keeps_cls else "patch", image_aspect_ratio=image_aspect_ratio,  # type: ignore[arg-type]
        )
        encoder = load_vision_encoder(vision)
        projector = build_projector("mlp2x_gelu", encoder.hidden_size, llm.get_input_embeddings().weight.shape[1])
        projector.load_state_dict(projector_state, strict=True)
        save_imported(out_dir, ImportedParts(source, template, torch_dtype, dtype, config, tokenizer, vision, encoder,
                                             projector, llm, encoder.image_processor()))
    return VisionLanguageModel.load(out_dir)


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

