"""Every rule between training config values, checked once before any weight loads (`check`): one ConfigError each."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import SchedulerType

from train.config import TrainConfig
from train.errors import ConfigError
from train.recipe_registry import Recipe, get_recipe


def check(cfg: TrainConfig, world_size: int, device: torch.device, model_config: Any = None) -> None:
    """Raise ConfigError for the first rule `cfg` breaks on `world_size` processes training on `device`.

    `model_config`: the `model.init_from` checkpoint's VLMConfig; read here (its JSON only, no weight) when None
    and `init_from` is set, after every rule that does not need it. A new model is described by `cfg.model`."""
    check_config(cfg)
    batch_split(cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size, world_size)
    precision_on(cfg.engine.precision, device)
    check_model(cfg, model_config if model_config is not None else init_model_config(cfg))


def check_config(cfg: TrainConfig) -> None:
    """The rules that need nothing but the config (`vlm train --print-config` and `vlm data audit` check these)."""
    s, d, g, e, t = cfg.schedule, cfg.data, cfg.data.guards, cfg.engine, cfg.trainable
    if s.global_batch_size <= 0 or s.micro_batch_size <= 0:
        raise ConfigError("schedule.global_batch_size and schedule.micro_batch_size must be positive")
    if s.max_steps <= 0 and s.epochs <= 0:
        raise ConfigError("give schedule.epochs > 0 or schedule.max_steps > 0")
    if cfg.model.init_from is None and (cfg.model.vision is None or cfg.model.llm is None):
        raise ConfigError("model: give either model.init_from or both model.vision and model.llm")
    if not d.data_path and not d.mixture:
        raise ConfigError("data: give data.data_path (one or more files) or data.mixture")
    if not 0.0 <= g.max_skip_ratio <= 1.0:
        raise ConfigError(f"data.guards.max_skip_ratio must be within [0, 1], got {g.max_skip_ratio}")
    if g.skip_warmup < 1 or g.fail_no_supervised_after < 1:
        raise ConfigError("data.guards.skip_warmup and data.guards.fail_no_supervised_after must be >= 1")
    if d.pack_length is not None and not d.packing:
        raise ConfigError("data.pack_length is set but data.packing is false")
    if d.packing and d.resolved_pack_length() < d.max_length:
        raise ConfigError(f"data.pack_length={d.pack_length} is shorter than data.max_length={d.max_length}: "
                          "a sample must fit a packed row whole")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must hold two numbers, got {cfg.optim.betas}")
    schedulers = [kind.value for kind in SchedulerType]
    if cfg.optim.scheduler not in schedulers:
        raise ConfigError(f"optim.scheduler: {cfg.optim.scheduler!r} is not one of {schedulers}")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError("checkpoint.keep_last must be >= 1")
    if e.strategy == "deepspeed" and not e.deepspeed_config:
        raise ConfigError("engine.strategy=deepspeed needs engine.deepspeed_config (a ZeRO JSON file)")
    recipe = get_recipe(cfg.recipe)
    llm_mode = recipe.llm_mode(t.llm_mode)
    vision_unfreezing(recipe, t.unfreeze_vision_last_n)
    if cfg.feature_cache.enabled and t.unfreeze_vision_last_n > 0:
        raise ConfigError("feature_cache.enabled=true needs a frozen vision encoder "
                          "(trainable.unfreeze_vision_last_n=0)")
    if cfg.model.init_from is None and cfg.model.template is None and recipe.default_template is None:
        raise ConfigError(f"model.template is required when building a new model for recipe={recipe.name}")
    if llm_mode == "qlora":
        qlora_strategy(cfg)
    if recipe.name == "prefer":
        prefer_rules(cfg)


def prefer_rules(cfg: TrainConfig) -> None:
    """The preference recipe: a loss it knows, beta > 0, label smoothing in [0, 0.5), no packing (a pair's two
    sequences are compared row against row)."""
    p = cfg.prefer
    if p.loss not in ("dpo", "ipo"):
        raise ConfigError(f"prefer.loss: {p.loss!r} is not one of ['dpo', 'ipo']")
    if not p.beta > 0:
        raise ConfigError(f"prefer.beta must be > 0, got {p.beta}")
    if not 0.0 <= p.label_smoothing < 0.5:
        raise ConfigError(f"prefer.label_smoothing must be within [0, 0.5), got {p.label_smoothing}")
    if p.label_smoothing and p.loss != "dpo":
        raise ConfigError("prefer.label_smoothing applies to prefer.loss=dpo only")
    if cfg.data.packing:
        raise ConfigError("recipe=prefer does not pack: a pair's chosen and rejected sequences are batched row by "
                          "row; set data.packing=false")


def check_model(cfg: TrainConfig, model_config: Any) -> None:
    """The rules that read the model: the `init_from` checkpoint's config, else `cfg.model` (a new model)."""
    vision = model_config.vision if model_config is not None else cfg.model.vision
    if cfg.feature_cache.enabled and vision is not None and vision.anyres:
        raise ConfigError("feature_cache.enabled=true with image_aspect_ratio anyres: the cache holds one feature map "
                          "per image, anyres encodes a size-dependent set of tiles; set feature_cache.enabled=false")
    if model_config is not None:
        inherited_template(cfg, model_config.template)
        if get_recipe(cfg.recipe).llm_mode(cfg.trainable.llm_mode) == "qlora":
            qlora_init_from(cfg.model.init_from)


def batch_split(global_batch: int, micro_batch: int, world_size: int) -> None:
    """A global batch is a whole number of micro-batches on every process."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ConfigError(f"schedule.global_batch_size={global_batch} is not divisible by schedule.micro_batch_size="
                          f"{micro_batch} x world_size={world_size} = {per_step}")


def precision_on(precision: str, device: torch.device) -> None:
    """bf16 is asked only where a GPU computes it (`auto` picks for itself)."""
    if precision != "bf16" or (device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return
    from train.distributed import cuda_unavailable_reason

    why = f" ({cuda_unavailable_reason()})" if not torch.cuda.is_available() else ""
    raise ConfigError(f"precision=bf16 needs a GPU with bf16 support, but training runs on {device}{why} "
                      "(bf16 on this CPU runs at under 1 GFLOP/s): use engine.precision=fp32 or engine.precision=auto")


def vision_unfreezing(recipe: Recipe, unfreeze_vision_last_n: int) -> None:
    """Vision blocks train only in a recipe whose row lists the vision encoder."""
    if unfreeze_vision_last_n and "vision" not in recipe.trains:
        raise ConfigError(f"recipe={recipe.name} trains {' and '.join(sorted(recipe.trains))} only; "
                          "unfreeze_vision_last_n needs a recipe that trains the vision encoder")


def inherited_template(cfg: TrainConfig, inherited: str | None) -> None:
    """A recipe that trains on conversations does not inherit phase 1's `plain` template silently."""
    recipe = get_recipe(cfg.recipe)
    template = cfg.model.template or recipe.default_template or inherited
    if recipe.chat_template_required and template == "plain" and not cfg.model.template:
        raise ConfigError(f"recipe={recipe.name} from {cfg.model.init_from} would inherit its template 'plain' "
                          "(phase 1's); set model.template (e.g. vicuna_v1)")


ZERO3_REFUSAL = ("llm_mode=qlora cannot run under DeepSpeed ZeRO-3 ({config}): ZeRO-3 partitions every parameter "
                 "across ranks, and bitsandbytes' packed 4-bit weights (with their quantization state) cannot be "
                 "partitioned or gathered. Use ZeRO-2 (engine.deepspeed_config=configs/deepspeed/zero2.json: the "
                 "4-bit base is replicated, adapters and optimizer state are sharded) or one GPU "
                 "(engine.strategy=single)")


def qlora_strategy(cfg: TrainConfig) -> None:
    """QLoRA + ZeRO-3 is refused, naming the alternative (reads the JSON only: no DeepSpeed needed)."""
    e = cfg.engine
    if e.strategy != "deepspeed" or not e.deepspeed_config:
        return
    from train.strategies.deepspeed_config import load_json_config

    stage = load_json_config(e.deepspeed_config).get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise ConfigError(ZERO3_REFUSAL.format(config=e.deepspeed_config))


def qlora_init_from(init_from: str | None) -> None:
    """QLoRA quantizes the LLM it loads: adapters saved beside a base cannot be merged into 4-bit weights."""
    from vlm.checkpoint import LORA_ADAPTER_DIR

    if init_from and (Path(init_from) / LORA_ADAPTER_DIR).is_dir():
        raise ConfigError(f"model.init_from={init_from} holds LoRA adapters ({LORA_ADAPTER_DIR}/), which cannot be "
                          "merged into 4-bit weights: merge them first (vlm merge-lora --model DIR --out MERGED) and "
                          "start QLoRA from the merged model")


def init_model_config(cfg: TrainConfig) -> Any:
    """The `model.init_from` checkpoint's VLMConfig, or None for a new model."""
    return read_model_config(cfg.model.init_from) if cfg.model.init_from else None


def read_model_config(init_from: str) -> Any:
    """The VLMConfig saved in `init_from` (one JSON file: no weight, no tokenizer)."""
    from vlm.config import VLMConfig

    try:
        return VLMConfig.load(Path(init_from))
    except FileNotFoundError as err:
        raise ConfigError(f"model.init_from={init_from}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"model.init_from={init_from}: {err}") from None
