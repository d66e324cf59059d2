"""Export to and import from HF `LlavaForConditionalGeneration` directories (weights mapped by name, strict)."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)
from transformers.initialization import no_init_weights

from conversation.templates import export_chat_template
from projectors.registry import build_projector
from vision_encoders.config import VisionEncoderConfig
from vision_encoders.registry import load_vision_encoder
from vlm.hf.common import (
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
from vlm.tokens import unused_rows


def llava_config(model: VisionLanguageModel) -> LlavaConfig:
    encoder = model.vision_encoder
    text_config = copy.deepcopy(model.llm.config)
    tie = ties_as_llava(model.llm)
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


def export_llava(model: VisionLanguageModel, out_dir: str | Path) -> Path:
    """Write a directory that `LlavaForConditionalGeneration` and `AutoProcessor` `.from_pretrained` load."""
    check_exportable(model)
    if model.image_processor.aspect_ratio == "pad":
        warnings.warn(
            "HF image processors cannot pad to square (image_aspect_ratio='pad'); the exported processor resizes "
            "to a square instead, so non-square images are preprocessed differently there", stacklevel=3,
        )
    return write_hf(to_llava(model), llava_processor(model), out_dir)


def import_llava(
    source: Path,
    out_dir: str | Path,
    template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    torch_dtype: str | None = None,
) -> VisionLanguageModel:
    """Convert a HF Llava directory into our checkpoint format (full), and return it loaded."""
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
