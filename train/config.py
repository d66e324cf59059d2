"""Typed training configuration in sections: dataclasses, YAML loading and `key.sub=value` command-line overrides."""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from train.errors import ConfigError
from train.recipe_registry import LLM_MODES, RECIPES
from train.strategies.registry import STRATEGIES
from vision_encoders.config import VisionEncoderConfig

# The choices come from the registries: a new row there is a new valid `recipe:` / `strategy:` value.
RecipeName = Literal[tuple(RECIPES)]  # type: ignore[valid-type]
LLMMode = Literal[LLM_MODES]  # type: ignore[valid-type]
Precision = Literal["auto", "fp32", "bf16"]
StrategyName = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]
GroupBy = Literal["none", "length", "modality_length"]


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
class DataGuardsConfig:
    """Fail loud at run time: what stops the run instead of skipping quietly."""

    strict: bool = False  # True: a bad record stops the run; False: skipped and counted
    # The run stops (non-zero exit, naming the cause and the first records) when more than this share of the
    # records seen is skipped, checked once `skip_warmup` records were seen and at the end...
    max_skip_ratio: float = 0.01
    skip_warmup: int = 200
    # ... or when its first N micro-batches (per process) carried no supervised token.
    fail_no_supervised_after: int = 20


@dataclass
class DataAuditConfig:
    """The pre-flight audit before training: records drawn evenly (-1: all, 0: no audit); strict: warnings stop too."""

    sample: int = 2000
    strict: bool = False


@dataclass
class DataConfig:
    """Where the records and images are, how they are batched and packed; `guards` and `audit` police them."""

    data_path: list[str] = field(default_factory=list)
    mixture: str | None = None  # a YAML mixture file (instead of data_path)
    image_folder: str | None = None
    max_length: int = 2048
    group_by: GroupBy = "none"
    num_workers: int = 0
    # Sequence packing: each step's samples packed whole into rows of at most `pack_length` tokens (default
    # `max_length`); `micro_batch_size` then counts rows. Every packed run first checks one packed micro-batch
    # against the same samples unpacked.
    packing: bool = False
    pack_length: int | None = None
    # Packing's exact lengths are cached here (a folder shared by runs over the same data); default
    # `<output_dir>/lengths`. The file is keyed by the record files' sha256, tokenizer, template, K and max_length.
    length_cache_dir: str | None = None
    guards: DataGuardsConfig = field(default_factory=DataGuardsConfig)
    audit: DataAuditConfig = field(default_factory=DataAuditConfig)

    def resolved_pack_length(self) -> int:
        return self.pack_length if self.pack_length is not None else self.max_length


@dataclass
class ScheduleConfig:
    """How many samples per optimizer step, and how many steps."""

    global_batch_size: int = 8
    micro_batch_size: int = 1
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    seed: int = 42


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
class TrainableConfig:
    """What trains within the recipe's parts (`train.recipe_registry`): the LLM's mode, vision blocks, LoRA."""

    llm_mode: LLMMode = "full"
    unfreeze_vision_last_n: int = 0
    gradient_checkpointing: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)  # read when llm_mode is lora or qlora


@dataclass
class EngineConfig:
    """How the step runs: the strategy (`train.strategies.registry`) and the precision."""

    strategy: StrategyName = "single"
    deepspeed_config: str | None = None
    precision: Precision = "auto"


@dataclass
class CheckpointConfig:
    """Where the run writes, how often it saves, and where it resumes from."""

    output_dir: str = "runs/unnamed"
    save_every: int = 0  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto | none | PATH


@dataclass
class LogConfig:
    log_every: int = 1
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class FeatureCacheConfig:
    """The frozen vision encoder's features kept on disk (`train.feature_cache`)."""

    enabled: bool | None = None  # null (auto): on in `align` when the encoder is frozen
    dir: str | None = None  # None: <checkpoint.output_dir>/feature_cache


@dataclass
class PreferConfig:
    """The `prefer` recipe's loss (`train.preference`): DPO (with conservative label smoothing) or IPO, and where
    the reference model's reply log-probabilities are cached (auto: <output_dir>/reference_logps; off: not kept)."""

    loss: Literal["dpo", "ipo"] = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    reference_cache: str = "auto"


@dataclass
class TrainConfig:
    """One training run; the rules between its values are in `train.rules`."""

    recipe: RecipeName = "instruct"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    prefer: PreferConfig = field(default_factory=PreferConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- the flat keys of before
# Deprecated for one release: the keys of the flat layout (before the sections), in a YAML file (a saved
# train_config.yaml too) or in a `key=value` override, are read at their new place, with one warning per key.
# Drop MOVED, `upgrade`, `moved_path` and their calls in the release after this one.
MOVED: dict[str, str] = {
    **{k: f"schedule.{k}" for k in ("global_batch_size", "micro_batch_size", "epochs", "max_steps", "seed")},
    **{k: f"trainable.{k}" for k in ("llm_mode", "unfreeze_vision_last_n", "gradient_checkpointing", "lora")},
    **{k: f"engine.{k}" for k in ("strategy", "deepspeed_config", "precision")},
    **{k: f"checkpoint.{k}" for k in ("output_dir", "save_every", "keep_last", "resume")},
    **{k: f"log.{k}" for k in ("log_every", "tensorboard", "progress_bar")},
    "feature_cache": "feature_cache.enabled",  # only a value, not a mapping (the section itself)
    "feature_cache_dir": "feature_cache.dir",
    **{f"data.{k}": f"data.guards.{k}" for k in ("strict", "max_skip_ratio", "skip_warmup", "fail_no_supervised_after")},
    "data.audit_sample": "data.audit.sample",
    "data.audit_strict": "data.audit.strict",
}


class ConfigDeprecationWarning(FutureWarning):
    """A config key of the flat layout, read at its new place (a FutureWarning: shown to users by default)."""


def _warn_moved(old: str, new: str) -> None:
    # The warnings module shows each message once per process: once per key.
    warnings.warn(f"config key {old!r} is deprecated, use {new!r} (the old key is read until the next release)",
                  ConfigDeprecationWarning, stacklevel=2)


def _is_moved(old: str, value: Any) -> bool:
    return old in MOVED and not (old == "feature_cache" and isinstance(value, dict))


def moved_path(path: list[str], value: Any = None, warn: bool = True) -> list[str]:
    """An override's key path in sections: `output_dir` -> checkpoint.output_dir, `lora.r` -> trainable.lora.r."""
    for cut in range(len(path), 0, -1):
        old = ".".join(path[:cut])
        if _is_moved(old, value if cut == len(path) else {}):
            if warn:
                _warn_moved(old, MOVED[old])
            return MOVED[old].split(".") + path[cut:]
    return path


def upgrade(data: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """A raw config mapping with every flat-layout key moved into its section (in place; also returned)."""
    for old, new in MOVED.items():
        *parents, leaf = old.split(".")
        holder = _walk(data, parents)
        if holder is None or leaf not in holder or not _is_moved(old, holder[leaf]):
            continue
        if warn:
            _warn_moved(old, new)
        value = holder.pop(leaf)
        *new_parents, new_leaf = new.split(".")
        target = _walk(data, new_parents, create=True)
        if target is None:
            raise ConfigError(f"{old} (deprecated) cannot move to {new}: {'.'.join(new_parents)} is not a mapping")
        if new_leaf in target:
            raise ConfigError(f"both {old} (deprecated) and {new} are given; keep {new}")
        target[new_leaf] = value
    return data


def _walk(data: dict[str, Any], keys: list[str], create: bool = False) -> dict[str, Any] | None:
    for key in keys:
        if create and data.get(key) is None:
            data[key] = {}
        sub = data.get(key)
        if not isinstance(sub, dict):
            return None
        data = sub
    return data


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
    """A TrainConfig from a plain mapping, every key and type checked (flat-layout keys moved, with a warning)."""
    return _from_dict(TrainConfig, upgrade(copy.deepcopy(data)))


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
        path = moved_path(path, value)
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
        data = apply_overrides(upgrade(data), list(overrides or []))
        return config_from_dict(data)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
