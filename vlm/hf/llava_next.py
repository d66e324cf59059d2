"""Export anyres models to, and import them from, HF `LlavaNextForConditionalGeneration` + `LlavaNextProcessor`."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)
from transformers.initialization import no_init_weights

from projectors.registry import build_projector
from vision_encoders.config import VisionEncoderConfig
from vision_encoders.registry import load_vision_encoder
from vlm.anyres_features import NEWLINE_WEIGHT, anyres_processor, attach_image_newline, check_anyres
from vlm.hf.common import (
    PROJECTOR_PREFIX,
    ExportError,
    ImportedParts,
    check_exportable,
    llava_state_dict,
    open_hf,
    save_imported,
    staging_next_to,
    ties_as_llava,
    unpack_hf_parts,
    write_hf,
)
from vlm.model import VisionLanguageModel
from vlm.tokens import embedding_width, unused_rows

NEWLINE_KEY = "model.image_newline"


def check_next_exportable(model: VisionLanguageModel) -> None:
    """`ExportError` for what LlavaNext cannot express (on top of what HF Llava cannot)."""
    check_exportable(model)
    if not model.config.vision.anyres:
        raise ExportError("LlavaNext export is for image_aspect_ratio 'anyres' models; this one exports as HF Llava")
    if model.config.vision.anyres_max_tiles is not None:
        raise ExportError(f"anyres_max_tiles={model.config.vision.anyres_max_tiles}: HF LlavaNext has no tile cap "
                          "(LlavaOnevision's anyres_max_N has one, but other differences); export without the cap")
    encoder = model.vision_encoder
    if model.image_processor.output_size != int(encoder.hf_config.image_size):
        raise ExportError(f"tiles of {model.image_processor.output_size}px, but the tower's native size is "
                          f"{encoder.hf_config.image_size}px, which HF LlavaNext uses for its grid")


def llava_next_config(model: VisionLanguageModel) -> LlavaNextConfig:
    encoder = model.vision_encoder
    text_config = copy.deepcopy(model.llm.config)
    tie = ties_as_llava(model.llm)
    text_config.tie_word_embeddings = tie
    text_config.vocab_size = model.llm.get_input_embeddings().weight.shape[0]
    return LlavaNextConfig(
        vision_config=copy.deepcopy(encoder.hf_config),
        text_config=text_config,
        image_token_id=model.config.image_token_id,
        vision_feature_layer=model.config.vision.select_layer,
        vision_feature_select_strategy="default" if encoder.has_cls_token else "full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_grid_pinpoints=[list(p) for p in model.image_processor.grid_pinpoints or []],
        image_seq_length=model.config.num_image_tokens,
        tie_word_embeddings=tie,
        pad_token_id=model.config.pad_token_id,
    )


def llava_next_state_dict(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under LlavaNext's names: Llava's, with the projector's `image_newline` at the model's top."""
    state = llava_state_dict(model)
    state[NEWLINE_KEY] = state.pop(PROJECTOR_PREFIX + NEWLINE_WEIGHT)
    return state


def to_llava_next(model: VisionLanguageModel) -> LlavaNextForConditionalGeneration:
    """An in-memory `LlavaNextForConditionalGeneration` with exactly our weights (loaded with strict=True)."""
    check_next_exportable(model)
    config = llava_next_config(model)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(model.dtype)
    try:
        with no_init_weights():
            hf = LlavaNextForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    if config.tie_word_embeddings:
        hf.tie_weights()
    hf.load_state_dict(llava_next_state_dict(model), strict=True)
    hf.generation_config.pad_token_id = model.config.pad_token_id
    hf.generation_config.eos_token_id = model.tokenizer.eos_token_id
    hf.generation_config.suppress_tokens = unused_rows(model.llm, model.tokenizer) or None  # rows past the vocab
    return hf.eval()


def llava_next_processor(model: VisionLanguageModel) -> LlavaNextProcessor:
    from conversation.templates import chat_template_jinja

    ours = model.image_processor
    side = ours.output_size
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        image_grid_pinpoints=[list(p) for p in ours.grid_pinpoints or []], image_mean=list(ours.mean),
        image_std=list(ours.std), rescale_factor=ours.rescale, resample=ours._filter(),
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=model.tokenizer,
        patch_size=int(model.vision_encoder.hf_config.patch_size),
        vision_feature_select_strategy=llava_next_config(model).vision_feature_select_strategy,
        chat_template=chat_template_jinja(model.config.template) if model.config.template != "tokenizer" else None,
        image_token=model.config.image_token,
        num_additional_image_tokens=1 if model.vision_encoder.has_cls_token else 0,
    )


def export_hf_next(model: VisionLanguageModel, out_dir: str | Path) -> Path:
    """Write a directory that `LlavaNextForConditionalGeneration` and `AutoProcessor` `.from_pretrained` load."""
    return write_hf(to_llava_next(model), llava_next_processor(model), out_dir)


def import_hf_next(
    source: str | Path, out_dir: str | Path, template: str = "vicuna_v1", torch_dtype: str | None = None
) -> VisionLanguageModel:
    """Convert a HF LlavaNext directory (a `llava-hf/llava-v1.6-*` layout) into our full checkpoint; return it loaded."""
    source = Path(source)
    hf, tokenizer, dtype = open_hf(LlavaNextForConditionalGeneration, source, torch_dtype)
    config = hf.config
    with staging_next_to(out_dir) as staging_dir:
        llm, projector_state = unpack_hf_parts(hf, source, staging_dir, dtype)
        projector_state[NEWLINE_WEIGHT] = hf.model.image_newline.detach().clone()
        del hf
        vision = VisionEncoderConfig(
            spec=f"hf:{staging_dir / 'vision'}", select_layer=config.vision_feature_layer,
            select_feature="patch", image_aspect_ratio="anyres",
            image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints],
        )
        encoder = load_vision_encoder(vision)
        if config.vision_feature_select_strategy == "full" and encoder.has_cls_token:
            raise ExportError(f"{source}: strategy 'full' keeps the CLS token, which anyres tiling cannot lay out")
        width = embedding_width(llm)
        projector = build_projector("mlp2x_gelu", encoder.hidden_size, width)
        check_anyres(vision, encoder, projector, "mlp2x_gelu")
        attach_image_newline(projector, width)
        projector.load_state_dict(projector_state, strict=True)
        save_imported(out_dir, ImportedParts(source, template, torch_dtype, dtype, config, tokenizer, vision, encoder,
                                             projector, llm, anyres_processor(vision, encoder)))
    return VisionLanguageModel.load(out_dir)

