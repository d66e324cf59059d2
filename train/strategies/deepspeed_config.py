"""Filling a user's DeepSpeed JSON ("auto" values) from our training config, and refusing what cannot run here."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from train.errors import ConfigError


class DeepSpeedConfigError(ConfigError):
    """A DeepSpeed config value that cannot be used, naming the key and why."""


def load_json_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A dict as given, or the JSON file it names (with the file in any error)."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeepSpeedConfigError(f"DeepSpeed config {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigError(f"DeepSpeed config {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(f"DeepSpeed config {str(path)!r} must be a JSON object")
    return data


def _fill(config: dict[str, Any], key: str, value: Any, label: str | None = None) -> None:
    """Set `key` when it is absent or "auto"; an explicit different value is an error (it would silently win)."""
    current = config.get(key, "auto")
    if current == "auto":
        config[key] = value
    elif current != value:
        raise DeepSpeedConfigError(
            f"DeepSpeed config sets {label or key}={current!r} but the training config implies {value!r}; "
            'set it to "auto" (or make the training config agree)'
        )


def _auto_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _auto_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def resolve_deepspeed_config(
    user: dict[str, Any],
    *,
    micro_batch_size: int,
    global_batch_size: int,
    world_size: int,
    max_grad_norm: float,
    bf16: bool,
    on_gpu: bool,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """The config handed to `deepspeed.initialize`, every "auto" replaced (as HF's integration does).

    Batch sizes, accumulation and clipping come from the training config; bf16 from the resolved precision;
    ZeRO bucket sizes from the LLM width (`hidden_size`). The optimizer and schedule are ours, so the
    JSON may not define them. On a CPU: no fp16/bf16, offload only to `cpu` (no nvme), no pinned memory.
    """
    config = copy.deepcopy(user)
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise DeepSpeedConfigError(
                f"DeepSpeed config has an '{section}' section, but the trainer builds AdamW and the lr schedule "
                "from optim.* (and steps them itself): remove the section"
            )
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise DeepSpeedConfigError(
            f"global_batch_size={global_batch_size} is not divisible by micro_batch_size={micro_batch_size} x "
            f"world_size={world_size}"
        )
    _fill(config, "train_batch_size", global_batch_size)
    _fill(config, "train_micro_batch_size_per_gpu", micro_batch_size)
    _fill(config, "gradient_accumulation_steps", global_batch_size // per_step)
    _fill(config, "gradient_clipping", float(max_grad_norm) if max_grad_norm and max_grad_norm > 0 else 0.0)

    fp16 = config.setdefault("fp16", {})
    if fp16.get("enabled", "auto") == "auto":
        fp16["enabled"] = False
    bf16_section = config.setdefault("bf16", {})
    if bf16_section.get("enabled", "auto") == "auto":
        bf16_section["enabled"] = bool(bf16)
    if bf16_section["enabled"] and fp16["enabled"]:
        raise DeepSpeedConfigError("DeepSpeed config enables both fp16 and bf16; choose one")
    if not on_gpu and (fp16["enabled"] or bf16_section["enabled"]):
        which = "fp16" if fp16["enabled"] else "bf16"
        raise DeepSpeedConfigError(f"DeepSpeed config enables {which}, which needs a GPU; on a CPU set "
                                   f'"{which}": {{"enabled": "auto"}} (fp32)')

    zero = config.setdefault("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise DeepSpeedConfigError(f"zero_optimization.stage={stage!r}; expected 0, 1, 2 or 3")
    buckets = {
        "reduce_bucket_size": (hidden_size * hidden_size) if hidden_size else None,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size) if hidden_size else None,
        "stage3_param_persistence_threshold": 10 * hidden_size if hidden_size else None,
    }
    for key, value in buckets.items():
        if zero.get(key) == "auto":
            if value is None:
                del zero[key]  # DeepSpeed's own default
            else:
                zero[key] = value
    for key in ("offload_optimizer", "offload_param"):
        offload = zero.get(key)
        if not isinstance(offload, dict):
            continue
        device = offload.get("device", "none")
        if device == "nvme" and not on_gpu:
            raise DeepSpeedConfigError(
                f"zero_optimization.{key}.device=nvme cannot run on a CPU-only machine (it needs DeepSpeed's "
                "async_io op and a GPU); use device 'cpu' or 'none'"
            )
        if key == "offload_param" and device != "none" and stage != 3:
            raise DeepSpeedConfigError(f"zero_optimization.offload_param needs stage 3, the config has stage {stage}")
        if not on_gpu and offload.get("pin_memory"):
            offload["pin_memory"] = False  # pinning is a CUDA feature; on a CPU it is meaningless
    if isinstance(zero.get("offload_optimizer"), dict) and zero["offload_optimizer"].get("device", "none") != "none":
        # Our optimizer is a torch AdamW; let ZeRO-Offload step it instead of demanding DeepSpeedCPUAdam.
        config.setdefault("zero_force_ds_cpu_optimizer", False)
    config.setdefault("zero_allow_untested_optimizer", True)
    config.setdefault("steps_per_print", 10**9)

    left = _auto_paths(config)
    if left:
        raise DeepSpeedConfigError(f'DeepSpeed config keys still "auto" that the trainer cannot fill: {left}')
    return config
