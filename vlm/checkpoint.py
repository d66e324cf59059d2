"""Checkpoint save/load: full (llm/ + vision/) or projector-only (references to the frozen parts), safetensors only."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from projectors.registry import build_projector
from vision_encoders.preprocess import ImageProcessor
from vision_encoders.registry import load_vision_encoder, parse_spec, resolve_path
from vlm.config import CONFIG_NAME, VLMConfig
from vlm.atomic import atomic_directory
from vlm.model import EMBEDDING_ROW_MULTIPLE, VisionLanguageModel, dtype_name, load_llm, resolve_dtype
from vlm.tokens import embedding_rows, embedding_width, fill_rows, gathered

PROJECTOR_FILE = "projector.safetensors"
ADDED_EMBEDDINGS_FILE = "added_embeddings.safetensors"
IMAGE_PROCESSOR_FILE = "image_processor.json"
TOKENIZER_DIR = "tokenizer"
LLM_DIR = "llm"
VISION_DIR = "vision"


def absolute_spec(spec: str, base_dir: Path) -> str:
    """A vision spec with its `./` paths made absolute against `base_dir` (the checkpoint directory)."""
    backend, name, checkpoint = parse_spec(spec)
    name = resolve_path(name, base_dir) or name
    checkpoint = resolve_path(checkpoint, base_dir)
    return f"{backend}:{name}" + (f"@{checkpoint}" if checkpoint else "")


def _is_relative(value: str) -> bool:
    return value.startswith("./")


def _spec_is_relative(spec: str) -> bool:
    _, name, checkpoint = parse_spec(spec)
    return _is_relative(name) or (checkpoint is not None and _is_relative(checkpoint))


def _state_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().cpu() for key, value in module.state_dict().items()}


def save(model: VisionLanguageModel, directory: str | Path, projector_only: bool = False) -> Path:
    """Write `model` to `directory` atomically; a projector-only checkpoint refers to the encoder and LLM by spec/path."""
    config = copy.deepcopy(model.config)
    if projector_only and (_is_relative(config.llm) or _spec_is_relative(config.vision.spec)):
        raise ValueError(
            f"projector-only save needs absolute references to the frozen parts, got llm={config.llm!r}, "
            f"vision={config.vision.spec!r}"
        )
    if projector_only and config.vision.unfreeze_last_n > 0:
        raise ValueError(
            f"projector-only save would drop the {config.vision.unfreeze_last_n} trained vision blocks; save a full checkpoint"
        )
    with atomic_directory(directory) as tmp:
        if projector_only:
            _save_added_embeddings(model, tmp / ADDED_EMBEDDINGS_FILE)
        else:
            model.llm.save_pretrained(tmp / LLM_DIR, safe_serialization=True)
            config.llm = f"./{LLM_DIR}"
            config.vision.spec = model.vision_encoder.save(tmp / VISION_DIR)
        save_file(_state_for_saving(model.projector), str(tmp / PROJECTOR_FILE))
        model.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        model.image_processor.save(tmp / IMAGE_PROCESSOR_FILE)
        config.save(tmp)
    return Path(directory)


def _save_added_embeddings(model: VisionLanguageModel, path: Path) -> None:
    ids = torch.tensor(model.config.added_token_ids, dtype=torch.long)
    input_weight = model.llm.get_input_embeddings().weight
    tensors = {"token_ids": ids, "input_embeddings": input_weight[ids].detach().contiguous().cpu()}
    output = model.llm.get_output_embeddings()
    if output is not None and output.weight is not input_weight:
        tensors["output_embeddings"] = output.weight[ids].detach().contiguous().cpu()
    save_file(tensors, str(path))


def _restore_added_embeddings(model: VisionLanguageModel, path: Path) -> None:
    tensors = load_file(str(path))
    ids = tensors["token_ids"]
    if ids.tolist() != model.config.added_token_ids:
        raise ValueError(f"{path}: token ids {ids.tolist()} differ from the config's {model.config.added_token_ids}")
    rows = len(model.tokenizer)
    old_rows = embedding_rows(model.llm)
    if old_rows < rows:
        model.llm.resize_token_embeddings(rows, pad_to_multiple_of=EMBEDDING_ROW_MULTIPLE, mean_resizing=False)
        # padding rows as `build` sets them (the mean of the base rows); the added ids are restored below
        fill_rows(model.llm, list(range(old_rows, embedding_rows(model.llm))))
    input_weight = model.llm.get_input_embeddings().weight
    output = model.llm.get_output_embeddings()
    if "output_embeddings" in tensors and (output is None or output.weight is input_weight):
        raise ValueError(f"{path}: holds separate output embeddings but the LLM ties them to its inputs")
    weights = [input_weight] + ([output.weight] if "output_embeddings" in tensors else [])
    with gathered(weights), torch.no_grad():  # ZeRO-3: the rows are written whole, then re-partitioned
        input_weight[ids] = tensors["input_embeddings"].to(input_weight)
        if "output_embeddings" in tensors:
            output.weight[ids] = tensors["output_embeddings"].to(output.weight)


def expected_files(config: VLMConfig) -> list[str]:
    files = [CONFIG_NAME, PROJECTOR_FILE, TOKENIZER_DIR, IMAGE_PROCESSOR_FILE]
    if _is_relative(config.llm):
        files.append(config.llm[2:])
    else:
        files.append(ADDED_EMBEDDINGS_FILE)
    if _spec_is_relative(config.vision.spec):
        files.append(VISION_DIR)
    return files


def check_files(directory: Path, config: VLMConfig | None) -> None:
    """A clear error listing what is missing and what the directory holds."""
    wanted = expected_files(config) if config is not None else [CONFIG_NAME]
    missing = [name for name in wanted if not (directory / name).exists()]
    if missing:
        holds = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "(not a directory)"
        raise FileNotFoundError(f"checkpoint {directory} is missing {missing}; it holds {holds}")


LORA_ADAPTER_DIR = "lora_adapter"  # written by `train` for llm_mode lora / qlora (peft format, safetensors)


def load(
    directory: str | Path,
    device: str | torch.device | None = None,
    torch_dtype: str | None = None,
    lora: str = "merge",
    *,
    attn_implementation: str | None = None,
    trust_remote_code: bool | None = None,
    llm_kwargs: dict[str, Any] | None = None,
) -> VisionLanguageModel:
    """Rebuild the model saved in `directory` (full or projector-only) with no other argument needed.

    A LoRA run's output (`lora_adapter/` beside the config) gets its adapters: merged into the LLM weights
    (`lora="merge"`, for inference and export), attached as a peft model (`"attach"`), or left out (`"ignore"`).
    `torch_dtype`, `attn_implementation` and `trust_remote_code` (None: the saved ones) replace the saved
    values: the LLM is loaded with them and the in-memory config (what a later save writes) records what was
    used. `llm_kwargs` go to the LLM's `from_pretrained` (QLoRA: 4-bit quantization, straight from disk).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    check_files(directory, None)
    config = VLMConfig.load(directory)
    check_files(directory, config)
    projector_only = not _is_relative(config.llm)
    # In memory the references are absolute, so that a later projector-only save still points at them.
    config.llm = str(directory / config.llm[2:]) if _is_relative(config.llm) else config.llm
    config.vision.spec = absolute_spec(config.vision.spec, directory)
    if torch_dtype is not None:
        config.torch_dtype = torch_dtype
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation
    if trust_remote_code is not None:
        config.trust_remote_code = trust_remote_code
    dtype = resolve_dtype(config.torch_dtype)
    if dtype is not None:
        config.torch_dtype = dtype_name(dtype)  # what was used (half precision degrades on a CPU)
    encoder = load_vision_encoder(config.vision)
    llm = load_llm(config.llm, config, dtype, **(llm_kwargs or {}))
    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR, trust_remote_code=config.trust_remote_code)
    image_id = tokenizer.convert_tokens_to_ids(config.image_token)
    if image_id != config.image_token_id:
        raise ValueError(f"{directory}: tokenizer maps {config.image_token!r} to {image_id}, config says {config.image_token_id}")
    projector = build_projector(config.projector, encoder.hidden_size, embedding_width(llm))
    if config.vision.anyres:  # its learned image_newline is saved in projector.safetensors
        from vlm.anyres_features import attach_image_newline, check_anyres

        check_anyres(config.vision, encoder, projector, config.projector)
        attach_image_newline(projector, embedding_width(llm))
    projector.load_state_dict(load_file(str(directory / PROJECTOR_FILE)), strict=True)
    if encoder.num_tokens != config.vision_num_tokens or projector.output_tokens(encoder.num_tokens) != config.num_image_tokens:
        raise ValueError(
            f"{directory}: encoder gives T={encoder.num_tokens} and projector K={projector.output_tokens(encoder.num_tokens)}, "
            f"config says T={config.vision_num_tokens}, K={config.num_image_tokens}"
        )
    processor = ImageProcessor.load(directory / IMAGE_PROCESSOR_FILE)
    model = VisionLanguageModel(config, encoder, projector, llm, tokenizer, processor)
    if projector_only:
        _restore_added_embeddings(model, directory / ADDED_EMBEDDINGS_FILE)
    elif embedding_rows(llm) < len(tokenizer):
        raise ValueError(f"{directory}: LLM has {embedding_rows(llm)} embedding rows but the tokenizer {len(tokenizer)} tokens")
    model.sync_llm_token_ids()
    _apply_lora(model, directory / LORA_ADAPTER_DIR, lora)
    if dtype is not None:
        model.vision_encoder.to(dtype)
        model.projector.to(dtype)
    if device is not None:
        model.to(device)
    return model.eval()  # as from_pretrained does; trainers call .train()


def _apply_lora(model: VisionLanguageModel, adapter: Path, mode: str) -> None:
    if mode not in ("merge", "attach", "ignore"):
        raise ValueError(f"lora={mode!r}: expected merge, attach or ignore")
    if mode == "ignore" or not adapter.is_dir():
        return
    from peft import PeftModel

    model.llm = PeftModel.from_pretrained(model.llm, str(adapter), is_trainable=False)
    if mode == "merge":
        model.llm = model.llm.merge_and_unload()
