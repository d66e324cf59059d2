"""Training checkpoints: trainable weights, optimizer, scheduler, RNG and data position, written atomically.

Layout of `<output_dir>/checkpoints/step-00000010/`:
  trainable.safetensors   every parameter with requires_grad (projector alone in phase 1; LoRA adapters)
  optimizer files          whatever the strategy writes (`optimizer.pt` single-process)
  (FSDP2: `model_shards/` and `optimizer_shards/`, each rank's shards through torch.distributed.checkpoint,
   in place of the two above)
  scheduler.json           the lr scheduler's state_dict
  rng_rank<R>.json         python / numpy / torch (/ cuda) RNG states of rank R
  data_rank<R>.json        the data order's own state of rank R, when it has one (the packer's)
  trainer_state.json       step, epoch, micro-batches done in the epoch, counters
A checkpoint exists only once its directory has its final name (temp dir, then rename), so a run killed
while saving leaves the previous checkpoint as the latest.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from train.errors import ConfigError
from train.strategies.base import Strategy
from vlm.atomic import replace_directory
from vlm.fingerprint import save as save_fingerprint

CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE = "trainable.safetensors"
SCHEDULER_FILE = "scheduler.json"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    """Where training stands; enough to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed by this rank
    samples_seen: int = 0
    tokens_seen: int = 0
    total_steps: int = 0
    world_size: int = 1
    global_batch_size: int = 0
    micro_batch_size: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerState":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """`none` -> None; `auto` -> the latest checkpoint of `output_dir` or None; else that path (must exist)."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume={resume!r} is not a checkpoint directory (no {STATE_FILE})")
    return path


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _listify(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_listify(v) for v in value]
    return value


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def trainable_state(strategy: Strategy, model: nn.Module) -> dict[str, torch.Tensor]:
    """Gathered values of the trainable parameters (named as in the unwrapped model)."""
    names = trainable_names(strategy.unwrap(model))
    full = strategy.trainable_state_dict(model)
    missing = [n for n in names if n not in full]
    if missing:
        raise RuntimeError(f"strategy state dict lacks trainable parameters {missing[:5]}")
    return {n: full[n].detach().to("cpu").contiguous() for n in names}


def save_checkpoint(output_dir: str | Path, state: TrainerState, strategy: Strategy, model: nn.Module,
                    scheduler: Any, keep_last: int, data_state: dict[str, Any] | None = None,
                    fingerprint: dict[str, Any] | None = None) -> Path:
    """Write checkpoint `state.step` atomically on all ranks, then prune to the last `keep_last`; `fingerprint`:
    the model's preprocessing fingerprint, which resume compares with its own."""
    final = checkpoint_dir(output_dir, state.step)
    tmp = final.with_name(f".{final.name}.tmp")
    # collective under ZeRO-3: every rank calls it; a sharding strategy writes its shards instead (no gather)
    weights = None if strategy.shards_checkpoints else trainable_state(strategy, model)
    if strategy.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of a run killed while saving
        tmp.mkdir(parents=True)
    strategy.barrier()
    (tmp / f"rng_rank{strategy.rank}.json").write_text(json.dumps(rng_state()))
    if data_state is not None:
        (tmp / f"data_rank{strategy.rank}.json").write_text(json.dumps(data_state))
    if strategy.shards_checkpoints:
        strategy.save_sharded(str(tmp), model)
    else:
        strategy.save_optimizer(str(tmp))
    if strategy.is_main:
        if weights is not None:
            save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict()))
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        if fingerprint is not None:
            save_fingerprint(fingerprint, tmp)
        _fsync_dir(tmp)
    strategy.barrier()
    if strategy.is_main:
        replace_directory(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    strategy.barrier()
    return final


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def load_trainable_weights(path: str | Path, model: nn.Module) -> None:
    """Copy a checkpoint's trainable weights into the (unwrapped) model; every name must match."""
    weights = load_file(str(Path(path) / WEIGHTS_FILE))
    expected = set(trainable_names(model))
    got = set(weights)
    if expected != got:
        raise ConfigError(f"checkpoint {path} does not match this run's trainable parameters: "
                          f"missing {sorted(expected - got)[:5]}, unexpected {sorted(got - expected)[:5]} "
                          "(was the recipe, llm_mode or LoRA config changed?)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].dtype))


def read_trainer_state(path: str | Path) -> TrainerState:
    return TrainerState.from_dict(json.loads((Path(path) / STATE_FILE).read_text()))


def load_checkpoint(path: str | Path, strategy: Strategy, model: nn.Module, scheduler: Any) -> TrainerState:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the trainer state.

    A sharded checkpoint saved on another number of processes is resharded; rank R then takes the RNG state of
    saved rank R modulo the saved world size."""
    path = Path(path)
    state = read_trainer_state(path)
    gathered = (path / WEIGHTS_FILE).is_file()
    if gathered == strategy.shards_checkpoints:
        kind = "gathered weights (trainable.safetensors)" if gathered else "sharded weights (engine.strategy=fsdp's)"
        raise ConfigError(f"checkpoint {path} holds {kind}, which engine.strategy={_strategy_name(strategy)} does "
                          "not resume: resume it under the strategy that wrote it")
    if strategy.shards_checkpoints:
        strategy.load_sharded(str(path), model)
    else:
        with strategy.full_parameters(model, modify=True):
            load_trainable_weights(path, strategy.unwrap(model))
        strategy.load_optimizer(str(path))
    scheduler.load_state_dict(json.loads((path / SCHEDULER_FILE).read_text()))
    rank = strategy.rank if state.world_size == strategy.world_size else strategy.rank % max(state.world_size, 1)
    rng_file = path / f"rng_rank{rank}.json"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{path}: no RNG state for rank {strategy.rank} (saved with another world size?)")
    set_rng_state(json.loads(rng_file.read_text()))
    return state


def _strategy_name(strategy: Strategy) -> str:
    from train.strategies.registry import STRATEGIES

    path = f"{type(strategy).__module__}:{type(strategy).__name__}"
    return next((name for name, where in STRATEGIES.items() if where == path), type(strategy).__name__)


def read_data_state(path: str | Path, rank: int) -> dict[str, Any] | None:
    """The data order's state saved by `rank` (None when the run that saved it had none, e.g. unpacked)."""
    file = Path(path) / f"data_rank{rank}.json"
    return json.loads(file.read_text()) if file.is_file() else None
