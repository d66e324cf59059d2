"""DeepSpeed ZeRO-1/2/3 (+ offload) through `deepspeed.initialize` with the user's JSON config, on GPU or CPU (gloo)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from train import distributed
from train.errors import ConfigError
from train.strategies.cpu_adam import cpu_adam_like, offloads_optimizer
from train.strategies.deepspeed_config import load_json_config, resolve_deepspeed_config
from train.strategies.text_only_grads import touch_unused_branches
from train.strategies.base import OptimizerFactory, ProcessGroupStrategy
from train.strategies.loss_view import LossView, vlm_of

OPTIMIZER_FILE_PATTERN = "zero_optimizer_rank{rank}.pt"


def import_deepspeed() -> Any:
    """`import deepspeed`, choosing its CPU accelerator when there is no GPU; a clear error when it is absent."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        raise ImportError(
            "strategy=deepspeed needs the deepspeed package: pip install 'vlm-trainer[deepspeed]' "
            f"(import failed: {exc})"
        ) from exc
    return deepspeed


def _safe_optimizer_classes() -> list[type]:
    """The DeepSpeed classes a ZeRO optimizer state dict holds besides tensors, allowed for weights_only loading."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _hidden_size(model: nn.Module) -> int | None:
    """The LLM width, for ZeRO's "auto" bucket sizes (HF's rule); None when the model does not say."""
    for holder in (getattr(model, "llm", None), model):
        size = getattr(getattr(holder, "config", None), "hidden_size", None)
        if isinstance(size, int):
            return size
    return None


def engine_dtype(resolved_config: dict[str, Any]) -> torch.dtype | None:
    """The dtype the engine trains in by its (resolved) JSON config: bf16, fp16, or None (fp32)."""
    if resolved_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if resolved_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return None


def cast_trainable(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast every trainable floating-point parameter that is not already a ZeRO-3 parameter to `dtype`; return how
    many changed.

    DeepSpeed casts the module to its dtype itself, except when any parameter was built under `zero.Init`: then it
    casts nothing, and peft's fp32 adapters sit next to bf16 parameters, which ZeRO-3 cannot flatten into one
    buffer (an assertion in `deepspeed.initialize`). The engine keeps the fp32 master copies."""
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and not hasattr(param, "ds_id") and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def _standalone_env_defaults() -> None:
    """Outside torchrun, a one-process group's environment: without it `deepspeed.initialize` looks for MPI."""
    import socket

    if all(os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")):
        return
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if not os.environ.get("MASTER_PORT"):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


class DeepSpeedStrategy(ProcessGroupStrategy):
    """Runs the loop's steps through a DeepSpeed engine.

    The loop already divides each micro-batch loss by the global token count, so `backward` passes
    `scale_wrt_gas=False`; the accumulation boundary is the loop's (set from `no_sync`), not DeepSpeed's
    micro-step counter. Clipping uses the config's `gradient_clipping` (filled from optim.max_grad_norm).
    """

    def __init__(
        self,
        config: str | Path | dict[str, Any],
        *,
        micro_batch_size: int,
        global_batch_size: int,
        max_grad_norm: float = 1.0,
        precision: str = "auto",
    ) -> None:
        self.deepspeed = import_deepspeed()
        self.user_config = load_json_config(config)
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        env = distributed.read_env()
        if env.device.type == "cuda":
            torch.cuda.set_device(env.device)
        if env.distributed and not dist.is_initialized():
            self.deepspeed.init_distributed(dist_backend=distributed.default_backend())
        elif not dist.is_initialized():
            _standalone_env_defaults()
        self.env = env
        self.engine: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.resolved_config: dict[str, Any] | None = None
        self._boundary = True
        # False once `use_cached_vision_features` was called: the features come from a cache filled before
        # training, and no rank runs the encoder
        self._encoder_in_forward = True

    @classmethod
    def from_train_config(cls, config: Any) -> "DeepSpeedStrategy":
        if not config.engine.deepspeed_config:
            raise ConfigError("engine.strategy=deepspeed needs engine.deepspeed_config "
                              "(e.g. configs/deepspeed/zero2.json)")
        return cls(
            config.engine.deepspeed_config,
            micro_batch_size=config.schedule.micro_batch_size,
            global_batch_size=config.schedule.global_batch_size,
            max_grad_norm=config.optim.max_grad_norm,
            precision=config.engine.precision,
        )

    @property
    def partitions_parameters(self) -> bool:
        """ZeRO-3: every parameter (frozen ones too) is partitioned; known from the JSON before `setup`."""
        return self.user_config.get("zero_optimization", {}).get("stage", 0) == 3

    def use_cached_vision_features(self) -> None:
        self._encoder_in_forward = False  # the text-only touch then skips the encoder too

    @property
    def zero_stage(self) -> int:
        assert self.resolved_config is not None, "setup() first"
        return int(self.resolved_config.get("zero_optimization", {}).get("stage", 0))

    def _bf16(self) -> bool:
        on_gpu = self.device.type == "cuda"
        if self.precision == "bf16":
            return True
        return self.precision == "auto" and on_gpu and torch.cuda.is_bf16_supported()

    def setup(self, model: nn.Module, optimizer_factory: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
        self.resolved_config = resolve_deepspeed_config(
            self.user_config,
            micro_batch_size=self.micro_batch_size,
            global_batch_size=self.global_batch_size,
            world_size=self.world_size,
            max_grad_norm=self.max_grad_norm,
            bf16=self._bf16(),
            on_gpu=self.device.type == "cuda",
            hidden_size=_hidden_size(model),
        )
        model.to(self.device)
        dtype = engine_dtype(self.resolved_config)
        if dtype is not None:
            cast_trainable(model, dtype)  # before the optimizer: its groups hold these very tensors
        optimizer = optimizer_factory(model)
        if offloads_optimizer(self.resolved_config):
            optimizer = cpu_adam_like(optimizer)
        if self.zero_stage == 3:
            encoder = getattr(model, "vision_encoder", None)
            for module, param in encoder.outside_parameters() if encoder is not None else []:
                self.deepspeed.zero.register_external_parameter(module, param)
        view = LossView(model)
        engine, _, _, _ = self.deepspeed.initialize(model=view, optimizer=optimizer, config=self.resolved_config)
        self.engine = engine
        # After initialize: ZeRO-3's own module hooks must run first, so that on text-only batches the
        # parameters are gathered (forward and backward) in the same order as with images.
        self._touch_handles = touch_unused_branches(model, run_encoder=self.zero_stage == 3 and self._encoder_in_forward,
                                                    called=view)
        # The torch optimizer's param_groups are the ones DeepSpeed steps (it swaps in its flat fp32
        # partitions but keeps the group dicts), so an lr scheduler built on it drives DeepSpeed's lr.
        self.optimizer = optimizer
        return engine, optimizer

    @property
    def keeps_master_weights(self) -> bool:
        return True

    @contextlib.contextmanager
    def model_init_context(self) -> Iterator[None]:
        """Under ZeRO-3, transformers' `from_pretrained` builds the LLM inside `deepspeed.zero.Init` (each rank
        allocates and loads only its partition) while an `HfDeepSpeedConfig` is alive; the encoder and projector
        are partitioned later, by `deepspeed.initialize`. Other stages: a no-op."""
        if int(self.user_config.get("zero_optimization", {}).get("stage", 0)) != 3:
            yield
            return
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        config = resolve_deepspeed_config(self.user_config, micro_batch_size=self.micro_batch_size,
                                          global_batch_size=self.global_batch_size, world_size=self.world_size,
                                          max_grad_norm=self.max_grad_norm, bf16=self._bf16(),
                                          on_gpu=self.device.type == "cuda")
        alive = HfDeepSpeedConfig(config)  # transformers holds only a weak reference: keep it for the build
        try:
            yield
        finally:
            del alive
            unset_hf_deepspeed_config()

    def autocast(self, precision: str):  # noqa: ANN201 - a context manager
        return contextlib.nullcontext()  # the engine casts by its JSON config

    @contextlib.contextmanager
    def _not_boundary(self) -> Iterator[None]:
        previous, self._boundary = self._boundary, False
        try:
            yield
        finally:
            self._boundary = previous

    def no_sync(self, model: nn.Module):  # noqa: ANN201 - a context manager
        # Not engine.no_sync(): DeepSpeed refuses it under ZeRO-2/3. Marking the micro-batch as not the
        # accumulation boundary defers the gradient reduction the same way.
        return self._not_boundary()

    def backward(self, loss: torch.Tensor) -> None:
        assert self.engine is not None, "setup() first"
        self.engine.set_gradient_accumulation_boundary(self._boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def clip_and_step(self, max_norm: float) -> float:
        assert self.engine is not None, "setup() first"
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return float("nan")
        return float(norm.item() if isinstance(norm, torch.Tensor) else norm)

    def zero_grad(self) -> None:
        return None  # the engine clears gradients in step()

    def unwrap(self, model: nn.Module) -> nn.Module:
        return vlm_of(getattr(model, "module", model))

    def state_dict_for_save(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full weights; under ZeRO-3 gathered layer by layer (every rank must call it; only rank 0 gets values,
        the others get the names with empty tensors)."""
        module = self.unwrap(model)
        if self.zero_stage < 3:
            return module.state_dict()
        gathered: dict[str, torch.Tensor] = {}
        self._gather_into(module, "", gathered)
        return gathered

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Under ZeRO-3 only the trainable parameters are gathered (module by module) and copied: a LoRA or
        projector checkpoint never materialises the frozen model."""
        module = self.unwrap(model)
        if self.zero_stage < 3:
            return super().trainable_state_dict(model)
        gathered: dict[str, torch.Tensor] = {}
        self._gather_into(module, "", gathered, trainable_only=True)
        return gathered

    def _gather_into(self, module: nn.Module, prefix: str, out: dict[str, torch.Tensor],
                     trainable_only: bool = False) -> None:
        named = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad or not trainable_only]
        if named:
            with self.deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
                for name, param in named:
                    out[prefix + name] = param.detach().to("cpu", copy=True) if self.is_main else torch.empty(0)
        if not trainable_only:
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and name not in module._non_persistent_buffers_set:
                    out[prefix + name] = buf.detach().to("cpu", copy=True)
        for name, child in module.named_children():
            self._gather_into(child, f"{prefix}{name}.", out, trainable_only)

    def full_parameters(self, model: nn.Module, modify: bool = False,
                        only: list[nn.Parameter] | None = None):  # noqa: ANN201 - a context manager
        """Under ZeRO-3 gather the parameters on every rank (collective: all ranks enter): `only` those when given,
        else all of them to read; with `modify` (a resume writes trainable weights only) just the trainable ones,
        whose rank-0 writes are partitioned back on exit. A no-op for stages 0-2, whose parameters are whole."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        params = only if only is not None else [p for p in self.unwrap(model).parameters()
                                                if p.requires_grad or not modify]
        return self.deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)

    def save_optimizer(self, directory: str) -> None:
        """Each rank writes its own ZeRO partition of the optimizer (master weights + Adam moments)."""
        assert self.engine is not None, "setup() first"
        path = os.path.join(directory, OPTIMIZER_FILE_PATTERN.format(rank=self.rank))
        torch.save(self.engine.optimizer.state_dict(), path)

    def load_optimizer(self, directory: str) -> None:
        assert self.engine is not None, "setup() first"
        path = os.path.join(directory, OPTIMIZER_FILE_PATTERN.format(rank=self.rank))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ZeRO optimizer partition for rank {self.rank} in {directory!r} "
                                    f"(expected {os.path.basename(path)}; saved with another world size?)")
        with torch.serialization.safe_globals(_safe_optimizer_classes()):
            state = torch.load(path, map_location="cpu", weights_only=True)
        # DeepSpeed indexes the list by data-parallel rank; the other ranks' entries are not read (same world size).
        states: list[Any] = [None] * self.world_size
        states[dist.get_rank() if dist.is_initialized() else 0] = state
        self.engine.optimizer.load_state_dict(states, load_from_fp32_weights=True)

    def close(self) -> None:
        distributed.barrier()
        distributed.destroy()
