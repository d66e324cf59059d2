"""Model assembly, one sequence for a fresh model (`VisionLanguageModel.build`) and a saved one (`.load`).

resolve the dtype -> load the vision encoder, the LLM and the tokenizer -> (fresh: add the image and pad tokens)
-> build the projector (anyres: with its learned newline row) -> (saved: its weights and image processor) ->
the model -> sync the LLM's token ids -> cast -> eval().
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from projectors.registry import build_projector
from vision_encoders.preprocess import ImageProcessor
from vision_encoders.registry import load_vision_encoder
from vlm.anyres_features import anyres_processor, attach_image_newline, check_anyres
from vlm.checkpoint import (
    IMAGE_PROCESSOR_FILE,
    LORA_ADAPTER_DIR,
    PROJECTOR_FILE,
    TOKENIZER_DIR,
    apply_lora,
    read_config,
    restore_embeddings,
)
from vlm.config import VLMConfig
from vlm.dtypes import dtype_name, resolve_dtype
from vlm.tokens import EMBEDDING_ROW_MULTIPLE, add_special_tokens, embedding_width, resize_for_tokenizer

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel


def load_llm(path: str, config: VLMConfig, dtype: torch.dtype | None, **load_kwargs: Any) -> PreTrainedModel:
    """Any `AutoModelForCausalLM`, with the config's attention implementation and remote-code policy.

    `load_kwargs` go to `from_pretrained` as they are (e.g. QLoRA's `quantization_config` and `device_map`).
    `config.attn_implementation` is set to what the loaded LLM actually runs, so a saved config records it."""
    attn = config.attn_implementation
    if attn.startswith("flash_attention") and not torch.cuda.is_available():
        warnings.warn(f"attn_implementation {attn!r} needs a CUDA GPU; using 'sdpa' on this machine", stacklevel=3)
        attn = "sdpa"
    kwargs: dict[str, Any] = {"attn_implementation": attn, "trust_remote_code": config.trust_remote_code,
                              "dtype": dtype if dtype is not None else torch.float32, **load_kwargs}
    llm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    used = getattr(llm.config, "_attn_implementation", None)
    config.attn_implementation = used if isinstance(used, str) else attn
    return llm


def assemble(cls: type["VisionLanguageModel"], config: VLMConfig, saved: Path | None = None,
             projector_only: bool = False, llm_kwargs: dict[str, Any] | None = None) -> "VisionLanguageModel":
    """The model `config` describes, in eval mode. `saved`: the checkpoint directory it was read from (its
    tokenizer, projector weights, image processor and, `projector_only`, its added embedding rows); None: a
    fresh model, whose tokenizer comes from `config.llm` and whose token ids, T and K are written into `config`.

    `config.torch_dtype` is resolved and set to what was used (half precision degrades to float32 on a CPU);
    `llm_kwargs` go to the LLM's `from_pretrained` (QLoRA: 4-bit quantization)."""
    dtype = resolve_dtype(config.torch_dtype)
    if dtype is not None:
        config.torch_dtype = dtype_name(dtype)
    encoder = load_vision_encoder(config.vision)
    llm = load_llm(config.llm, config, dtype, **(llm_kwargs or {}))
    tokenizer_source = config.llm if saved is None else saved / TOKENIZER_DIR
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=config.trust_remote_code)
    if saved is None:
        added = add_special_tokens(tokenizer, config.image_token)
        config.added_token_ids = resize_for_tokenizer(llm, tokenizer, added, pad_to_multiple_of=EMBEDDING_ROW_MULTIPLE)
        config.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
        config.pad_token_id = int(tokenizer.pad_token_id)
    elif (image_id := tokenizer.convert_tokens_to_ids(config.image_token)) != config.image_token_id:
        raise ValueError(f"{saved}: tokenizer maps {config.image_token!r} to {image_id}, config says {config.image_token_id}")
    width = embedding_width(llm)
    projector = build_projector(config.projector, encoder.hidden_size, width)
    if config.vision.anyres:  # a saved newline row is in projector.safetensors
        check_anyres(config.vision, encoder, projector, config.projector)
        attach_image_newline(projector, width)
    if saved is None:
        config.vision_num_tokens = encoder.num_tokens
        config.num_image_tokens = projector.output_tokens(encoder.num_tokens)
        processor = anyres_processor(config.vision, encoder) if config.vision.anyres else encoder.image_processor()
    else:
        projector.load_state_dict(load_file(str(saved / PROJECTOR_FILE)), strict=True)
        k = projector.output_tokens(encoder.num_tokens)
        if encoder.num_tokens != config.vision_num_tokens or k != config.num_image_tokens:
            raise ValueError(f"{saved}: encoder gives T={encoder.num_tokens} and projector K={k}, "
                             f"config says T={config.vision_num_tokens}, K={config.num_image_tokens}")
        processor = ImageProcessor.load(saved / IMAGE_PROCESSOR_FILE)
    model = cls(config, encoder, projector, llm, tokenizer, processor)
    if saved is not None:
        restore_embeddings(model, saved, projector_only)
    model.sync_llm_token_ids()
    if dtype is not None:
        model.vision_encoder.to(dtype)
        model.projector.to(dtype)
    return model.eval()  # as from_pretrained does; trainers call .train()


def load(
    cls: type["VisionLanguageModel"],
    directory: str | Path,
    device: str | torch.device | None = None,
    torch_dtype: str | None = None,
    lora: str = "merge",
    *,
    attn_implementation: str | None = None,
    trust_remote_code: bool | None = None,
    llm_kwargs: dict[str, Any] | None = None,
) -> "VisionLanguageModel":
    """Rebuild the model saved in `directory` (full or projector-only) with no other argument needed.

    A LoRA run's output (`lora_adapter/` beside the config) gets its adapters: merged into the LLM weights
    (`lora="merge"`, for inference and export), attached as a peft model (`"attach"`), or left out (`"ignore"`).
    `torch_dtype`, `attn_implementation` and `trust_remote_code` (None: the saved ones) replace the saved
    values: the LLM is loaded with them and the in-memory config (what a later save writes) records what was
    used. `llm_kwargs` go to the LLM's `from_pretrained` (QLoRA: 4-bit quantization, straight from disk).
    """
    directory = Path(directory)
    config, projector_only = read_config(directory)
    if torch_dtype is not None:
        config.torch_dtype = torch_dtype
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation
    if trust_remote_code is not None:
        config.trust_remote_code = trust_remote_code
    model = assemble(cls, config, saved=directory, projector_only=projector_only, llm_kwargs=llm_kwargs)
    apply_lora(model, directory / LORA_ADAPTER_DIR, lora)
    if device is not None:
        model.to(device)
    return model.eval()
