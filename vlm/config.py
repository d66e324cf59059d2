"""Typed configuration of a vision-language model, saved as `vlm_config.json` (strict: unknown keys are errors)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vision_encoders.config import VisionEncoderConfig

CONFIG_NAME = "vlm_config.json"
# What eval and chat accept as --dtype (resolved by vlm.dtypes.inference_dtype)
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_CHOICES = ["auto", "bfloat16", "float16", "float32", *DTYPE_ALIASES]


@dataclass
class VLMConfig:
    """Names every part of the model; `image_token_id`, `pad_token_id`, K and T are filled in by `build()`.

    `llm` is a hub id or a path; a path starting with `./` is relative to the checkpoint directory.
    """

    vision: VisionEncoderConfig
    projector: str
    llm: str
    template: str
    image_token: str = "<image>"
    image_token_id: int = -1
    pad_token_id: int = -1
    num_image_tokens: int = -1  # K: LLM positions per image
    vision_num_tokens: int = -1  # T: encoder tokens per image
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    torch_dtype: str | None = None
    # ids of the tokens `build()` added to the tokenizer (<image>, pad), whose embedding rows a
    # projector-only checkpoint stores in `added_embeddings.safetensors`
    added_token_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["vision"] = self.vision.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "VLMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown VLM config keys {sorted(unknown)}; known: {sorted(known)}")
        required = {"vision", "projector", "llm", "template"}
        missing = required - set(data)
        if missing:
            raise ValueError(f"{source}: VLM config lacks required keys {sorted(missing)}")
        values = dict(data)
        vision = values.pop("vision")
        if not isinstance(vision, dict):
            raise ValueError(f"{source}: 'vision' must be an object, got {type(vision).__name__}")
        return cls(vision=VisionEncoderConfig.from_dict(vision), **values)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "VLMConfig":
        path = Path(directory) / CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))
