"""FSDP2's sharded checkpoints (`torch.distributed.checkpoint`) and the DTensor helpers its strategy needs."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from train.errors import ConfigError

MODEL_DIR = "model_shards"  # trainable weights, one file per rank (DCP), resharded on load
OPTIMIZER_DIR = "optimizer_shards"
VIEW_PREFIX = "vlm."  # the strategy's root module is a `LossView`: its names are the VLM's behind this prefix


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


class FSDPCheckpointer:
    """Saves and loads the trainable weights and the optimizer state of a `fully_shard`ed root through DCP's
    `get/set_model_state_dict` and `get/set_optimizer_state_dict` (sharded state dicts: no rank gathers anything)."""

    def __init__(self, root: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        self.root = root
        self.optimizer = optimizer
        # Frozen weights are the base model's, not the run's: they are not written (a LoRA checkpoint holds adapters)
        self.options = StateDictOptions(ignore_frozen_params=True)
        # ... and so are absent on load (`_check_names` has checked that every trainable one is there)
        self.load_options = StateDictOptions(ignore_frozen_params=True, strict=False)

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.root.named_parameters() if p.requires_grad]

    def save_model(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        dcp.save(get_model_state_dict(self.root, options=self.options), checkpoint_id=directory)

    def load_model(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        self._check_names(directory)
        state = get_model_state_dict(self.root, options=self.options)
        dcp.load(state, checkpoint_id=directory)  # each rank reads the pieces of its own shards
        set_model_state_dict(self.root, state, options=self.load_options)

    def save_optimizer(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save(get_optimizer_state_dict(self.root, self.optimizer, options=self.options), checkpoint_id=directory)

    def load_optimizer(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        if not (Path(directory) / ".metadata").is_file():
            raise FileNotFoundError(f"no sharded optimizer state in {directory!r} (expected DCP files)")
        state = get_optimizer_state_dict(self.root, self.optimizer, options=self.options)
        dcp.load(state, checkpoint_id=directory)
        set_optimizer_state_dict(self.root, self.optimizer, state, options=self.load_options)

    def _check_names(self, directory: str) -> None:
        """The checkpoint holds exactly this run's trainable parameters (the message of a full checkpoint's check)."""
        from torch.distributed.checkpoint import FileSystemReader

        if not (Path(directory) / ".metadata").is_file():
            raise FileNotFoundError(f"no sharded weights in {directory!r} (expected DCP files)")
        saved = {k.removeprefix(VIEW_PREFIX) for k in FileSystemReader(directory).read_metadata().state_dict_metadata}
        expected = {n.removeprefix(VIEW_PREFIX) for n in self.trainable_names()}
        if saved != expected:
            raise ConfigError(f"checkpoint {Path(directory).parent} does not match this run's trainable parameters: "
                              f"missing {sorted(expected - saved)[:5]}, unexpected {sorted(saved - expected)[:5]} "
                              "(was the recipe, llm_mode or LoRA config changed?)")
