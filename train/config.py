"""Typed training configuration: dataclasses, YAML loading and `key.sub=value` command-line overrides."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from train.recipe_registry import LLM_MODES, RECIPES
from train.strategies.registry import STRATEGIES
from vision_encoders.config import VisionEncoderConfig

# The choices come from the registries: a new row there is a new valid `recipe:` / `strategy:` value.
RecipeName = Literal[tuple(RECIPES)]  # type: ignore[valid-type]
LLMMode = Literal[LLM_MODES]  # type: ignore[valid-type]
Precision = Literal["auto", "fp32", "bf16"]
StrategyName = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]
GroupBy = Literal["none", "length", "modality_length"]


class ConfigError(ValueError):
    """A configuration value or key that cannot be used, naming the key and why."""


@dataclass
class ModelConfig:
    """Either `init_from` (a checkpoint dir, e.g. phase 1's output) or the parts to build a new model."""

    init_from: str | None = None
    vision: VisionEncoderConfig | None = None
    projector: str = "mlp2x_gelu"
    llm: str | None = None
    # Training template; with `init_from` it replaces the checkpoint's (phase 2 trains vicuna_v1 on a `plain` phase 1).
    template: str | None = None
    # null: the `init_from` checkpoint's own (a new model: sdpa, no remote code, float32); a value given here
    # takes effect over `init_from` too (the LLM is loaded with it) and is recorded in the saved model config (vlm.config.CONFIG_NAME).
    attn_implementation: str | None = None
    trust_remote_code: bool | None = None
    torch_dtype: str | None = None  # float32 | bfloat16 | float16: the dtype the weights are loaded in


@dataclass
class DataConfig:
    """Where the records and images are, and how they are batched."""

    data_path: list[str] = field(default_factory=list)
    mixture: str | None = None  # a YAML mixture file (instead of data_path)
    image_folder: str | None = None
    max_length: int = 2048
    group_by: GroupBy = "none"
    num_workers: int = 0
    strict: bool = False  # True: a bad record stops the run; False: skipped and counted
    # Fail loud: the run stops (non-zero exit, naming the cause and the first records) when more than this
    # share of the records seen is skipped, checked once `skip_warmup` records were seen and at the end...
    max_skip_ratio: float = 0.01
    skip_warmup: int = 200
    # ... or when its first N micro-batches (per process) carried no supervised token.
    fail_no_supervised_after: int = 20
    # Pre-flight audit before training: records drawn evenly (-1: all, 0: no audit); strict: warnings stop too.
    audit_sample: int = 2000
    audit_strict: bool = False
    # Sequence packing: each step's samples packed whole into rows of at most `pack_length` tokens (default
    # `max_length`); `micro_batch_size` then counts rows. Every packed run first checks one packed micro-batch
    # against the same samples unpacked.
    packing: bool = False
    pack_length: int | None = None

    def resolved_pack_length(self) -> int:
        return self.pack_length if self.pack_length is not None else self.max_length


@dataclass
class OptimConfig:
    """AdamW + a transformers scheduler; projector/vision lrs default to `lr`."""

    lr: float = 2e-5
    projector_lr: float | None = None
    vision_lr: float | None = None
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0


@dataclass
class LoraSettings:
    """peft LoRA hyper-parameters; `target_modules` None = every linear layer of the LLM except the LM head."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] | None = None


@dataclass
class TrainConfig:
    """One training run."""

    recipe: RecipeName = "instruct"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    global_batch_size: int = 8
    micro_batch_size: int = 1
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    seed: int = 42
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    llm_mode: LLMMode = "full"
    unfreeze_vision_last_n: int = 0
    save_every: int = 0  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = 2
    output_dir: str = "runs/unnamed"
    resume: str = "auto"  # auto | none | PATH
    strategy: StrategyName = "single"
    deepspeed_config: str | None = None
    log_every: int = 1
    feature_cache: bool | None = None  # null (auto): on in `align` when the encoder is frozen
    feature_cache_dir: str | None = None  # None: <output_dir>/feature_cache
    tensorboard: bool = True
    progress_bar: bool = True

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work together."""
        if self.global_batch_size <= 0 or self.micro_batch_size <= 0:
            raise ConfigError("global_batch_size and micro_batch_size must be positive")
        if self.model.init_from is None and (self.model.vision is None or self.model.llm is None):
            raise ConfigError("model: give either model.init_from or both model.vision and model.llm")
        if not self.data.data_path and not self.data.mixture:
            raise ConfigError("data: give data.data_path (one or more files) or data.mixture")
        if self.strategy == "deepspeed" and not self.deepspeed_config:
            raise ConfigError("strategy=deepspeed needs deepspeed_config (a ZeRO JSON file)")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("give epochs > 0 or max_steps > 0")
        if self.keep_last < 1:
            raise ConfigError("keep_last must be >= 1")
        if not 0.0 <= self.data.max_skip_ratio <= 1.0:
            raise ConfigError(f"data.max_skip_ratio must be within [0, 1], got {self.data.max_skip_ratio}")
        if self.data.skip_warmup < 1 or self.data.fail_no_supervised_after < 1:
            raise ConfigError("data.skip_warmup and data.fail_no_supervised_after must be >= 1")
        if self.data.pack_length is not None and not self.data.packing:
            raise ConfigError("data.pack_length is set but data.packing is false")
        if self.data.packing and self.data.resolved_pack_length() < self.data.max_length:
            raise ConfigError(f"data.pack_length={self.data.pack_length} is shorter than data.max_length="
                              f"{self.data.max_length}: a sample must fit a packed row whole")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
        if len(args) < len(typing.get_args(tp)):  # X | Y | None
            return True, Union[tuple(args)]  # type: ignore[return-value]
    return False, tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (after YAML parsing); small int->float widening only."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {_type_name(inner)})")
    tp = inner
    if typing.get_origin(tp) in (Union, types.UnionType):  # e.g. list[list[int]] | str: the first that fits
        errors = []
        for alternative in typing.get_args(tp):
            if alternative is type(None):
                continue
            try:
                return _coerce(value, alternative, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_tp is str:
            value = [value]  # a single path where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = _yaml11_float(value, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _yaml11_float(text: str, key: str) -> float:
    # PyYAML (YAML 1.1) reads `1e-3` (no dot) as a string; accept what Python reads as a float.
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {text!r}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(f"unknown key(s) {unknown}{where}; valid keys: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a plain mapping, every key and type checked."""
    return _from_dict(TrainConfig, data)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from None
    return key.split("."), value


def _set_path(data: dict[str, Any], cls: type, path: list[str], value: Any, full_key: str) -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown key {full_key!r}: {head!r} is not a field; valid keys: {names}")
    if len(path) == 1:
        data[head] = value
        return
    _, inner = _is_optional(hints[head])
    if not dataclasses.is_dataclass(inner):
        raise ConfigError(f"unknown key {full_key!r}: {head!r} has no sub-keys")
    sub = data.get(head)
    if sub is None:
        sub = {}
    elif dataclasses.is_dataclass(sub):
        sub = dataclasses.asdict(sub)
    data[head] = sub
    _set_path(sub, inner, path[1:], value, full_key)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings (values parsed as YAML) to a raw config mapping."""
    for text in overrides:
        path, value = _parse_override(text)
        _set_path(data, TrainConfig, path, value, ".".join(path))
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when `path` is None), apply overrides, check types."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    try:
        data = apply_overrides(data, list(overrides or []))
        return config_from_dict(data)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
