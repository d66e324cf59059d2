"""The checkpoint directory: full (llm/ + vision/) or projector-only (references to the frozen parts), safetensors only.

What is written and read here; `vlm.assembly.load` rebuilds the model from it."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from vision_encoders.registry import parse_spec, resolve_path
from vlm import fingerprint
from vlm.config import CONFIG_NAME, VLMConfig
from vlm.atomic import atomic_directory
from vlm.tokens import EMBEDDING_ROW_MULTIPLE, embedding_rows, fill_rows, gathered

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel

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


def save(model: "VisionLanguageModel", directory: str | Path, projector_only: bool = False,
         llm_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `model` to `directory` atomically; a projector-only checkpoint refers to the encoder and LLM by spec/path.
    `llm_state`: the LLM's weights when the module itself does not hold them whole (ZeRO-3 gathers them part by
    part into it instead of materialising the model on every rank)."""
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
            model.llm.save_pretrained(tmp / LLM_DIR, safe_serialization=True, state_dict=llm_state)
            config.llm = f"./{LLM_DIR}"
            config.vision.spec = model.vision_encoder.save(tmp / VISION_DIR)
        save_file(_state_for_saving(model.projector), str(tmp / PROJECTOR_FILE))
        model.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        model.image_processor.save(tmp / IMAGE_PROCESSOR_FILE)
        fingerprint.save(fingerprint.compute(model), tmp)  # what the model saw, for drift checks at load
        config.save(tmp)
    return Path(directory)


def _save_added_embeddings(model: "VisionLanguageModel", path: Path) -> None:
    ids = torch.tensor(model.config.added_token_ids, dtype=torch.long)
    input_weight = model.llm.get_input_embeddings().weight
    tensors = {"token_ids": ids, "input_embeddings": input_weight[ids].detach().contiguous().cpu()}
    output = model.llm.get_output_embeddings()
    if output is not None and output.weight is not input_weight:
        tensors["output_embeddings"] = output.weight[ids].detach().contiguous().cpu()
    save_file(tensors, str(path))


def _restore_added_embeddings(model: "VisionLanguageModel", path: Path) -> None:
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


def read_config(directory: Path) -> tuple[VLMConfig, bool]:
    """The saved model config, its references made absolute, and whether the checkpoint is projector-only; a
    clear error for a missing directory or file."""
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    check_files(directory, None)
    config = VLMConfig.load(directory)
    check_files(directory, config)
    projector_only = not _is_relative(config.llm)
    # In memory the references are absolute, so that a later projector-only save still points at them.
    config.llm = str(directory / config.llm[2:]) if _is_relative(config.llm) else config.llm
    config.vision.spec = absolute_spec(config.vision.spec, directory)
    return config, projector_only


def restore_embeddings(model: "VisionLanguageModel", directory: Path, projector_only: bool) -> None:
    """Projector-only: the added tokens' embedding rows back into the referenced LLM; full: its rows checked."""
    if projector_only:
        _restore_added_embeddings(model, directory / ADDED_EMBEDDINGS_FILE)
    elif embedding_rows(model.llm) < len(model.tokenizer):
        raise ValueError(f"{directory}: LLM has {embedding_rows(model.llm)} embedding rows but the tokenizer "
                         f"{len(model.tokenizer)} tokens")


def apply_lora(model: "VisionLanguageModel", adapter: Path, mode: str) -> None:
    """A LoRA run's adapters: merged into the LLM (`merge`), attached as a peft model (`attach`), or `ignore`d."""
    if mode not in ("merge", "attach", "ignore"):
        raise ValueError(f"lora={mode!r}: expected merge, attach or ignore")
    if mode == "ignore" or not adapter.is_dir():
        return
    from peft import PeftModel

    model.llm = PeftModel.from_pretrained(model.llm, str(adapter), is_trainable=False)
    if mode == "merge":
        model.llm = model.llm.merge_and_unload()
