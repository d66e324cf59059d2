"""PyTorch FSDP2 under torchrun: `fully_shard` per vision block, the projector and each decoder layer, then the root."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from train import distributed
from train.strategies.base import OptimizerFactory, ProcessGroupStrategy
from train.strategies.decoder_layers import compile_decoder_layers, decoder_layers
from train.strategies.fsdp_state import MODEL_DIR, OPTIMIZER_DIR, FSDPCheckpointer, full_tensor
from train.strategies.loss_view import LossView, vlm_of
from train.strategies.text_only_grads import touch_unused_branches
from vlm.anyres_features import NEWLINE


class FSDPStrategy(ProcessGroupStrategy):
    """Sharded data parallel with `torch.distributed.fsdp.fully_shard` over a 1-D device mesh.

    Every parameter, the frozen vision tower's too, is sharded: no rank may run a sharded module alone, so text-only
    micro-batches run the image branch on nothing (`touch_unused_branches`, the encoder included unless the
    features come from a cache filled before training), as under ZeRO-3. Gradients are averaged over ranks by the
    reduce-scatter after each unit's backward (the loop's loss contract, as DDP). bf16 runs keep fp32 sharded
    weights and compute in bf16 with fp32 gradient reduction (MixedPrecisionPolicy). Checkpoints are sharded
    (`torch.distributed.checkpoint`): each rank writes its shards, and a run resumes on another number of ranks.
    """

    def __init__(self, *, precision: str = "auto", reshard_after_forward: bool = True, cpu_offload: bool = False,
                 compile: bool = False, backend: str | None = None) -> None:
        self.env = _join_group(backend)
        self.precision = precision
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self.compile = compile
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._encoder_in_forward = True  # False once the features come from a cache filled before training
        self._checkpointer: FSDPCheckpointer | None = None

    @classmethod
    def from_train_config(cls, config: Any) -> FSDPStrategy:
        engine = config.engine
        return cls(precision=engine.precision, reshard_after_forward=engine.fsdp.reshard_after_forward,
                   cpu_offload=engine.fsdp.cpu_offload, compile=engine.compile)

    # ------------------------------------------------------------------ what the loop and recipes ask
    @property
    def partitions_parameters(self) -> bool:
        return True

    @property
    def shards_checkpoints(self) -> bool:
        return True

    def use_cached_vision_features(self) -> None:
        self._encoder_in_forward = False

    def _bf16(self) -> bool:
        on_gpu = self.device.type == "cuda" and torch.cuda.is_available()
        return self.precision == "bf16" or (self.precision == "auto" and on_gpu and torch.cuda.is_bf16_supported())

    # ------------------------------------------------------------------ setup
    def setup(self, model: nn.Module, optimizer_factory: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("FSDP: the model has no trainable parameters")
        # No `model.to(device)`: `fully_shard` moves each unit's shards to the mesh's device, so a GPU never holds
        # the whole model (the host copy each rank loaded is freed as the shards replace it).
        if self.compile:
            compile_decoder_layers(model.llm)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self._bf16()
              else MixedPrecisionPolicy())
        offload = CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()
        shard: dict[str, Any] = dict(mesh=mesh, reshard_after_forward=self.reshard_after_forward, mp_policy=mp,
                                     offload_policy=offload)
        encoder = getattr(model, "vision_encoder", None)
        for block in encoder.blocks() if encoder is not None else []:
            fully_shard(block, **shard)
        newline = getattr(model.projector, NEWLINE, None)
        if newline is not None:  # anyres' learned row: called for its value outside the projector's forward
            fully_shard(newline, **shard)
        if any(True for _ in model.projector.parameters()):  # the identity projector has none
            fully_shard(model.projector, **shard)
        for layer in decoder_layers(model.llm):
            fully_shard(layer, **shard)
        view = LossView(model)
        # The root holds the rest (embeddings, final norm, LM head, the encoder's embeddings), gathered for the whole
        # forward; it stays gathered until backward ends (it is used first and last).
        fully_shard(view, **{**shard, "reshard_after_forward": False})
        # FSDP2 keeps the root gathered after its forward, for the backward; a pass without gradients (the packing
        # self-check) has no backward to free it: it is resharded at once.
        view.register_forward_hook(lambda module, args, output: None if torch.is_grad_enabled() else module.reshard())
        self._touch_handles = touch_unused_branches(model, run_encoder=self._encoder_in_forward, called=view)
        self.model = view
        self.optimizer = optimizer_factory(model)  # over the sharded (DTensor) parameters, named as before
        self._checkpointer = FSDPCheckpointer(view, self.optimizer)
        return view, self.optimizer

    # ------------------------------------------------------------------ a step
    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()  # each unit reduce-scatters (averages) its gradients as its backward ends

    def clip_and_step(self, max_norm: float) -> float:
        """`torch.nn.utils.clip_grad_norm_` over the sharded (DTensor) gradients: DTensor reduces the shards' norms
        into the global one, and every shard is scaled by the same coefficient; then the optimizer step."""
        assert self.model is not None and self.optimizer is not None, "setup() first"
        params = [p for p in self.unwrap(self.model).parameters() if p.requires_grad and p.grad is not None]
        if max_norm and max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self.optimizer.step()
        return float(full_tensor(norm))

    def zero_grad(self) -> None:
        assert self.optimizer is not None, "setup() first"
        self.optimizer.zero_grad(set_to_none=True)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return vlm_of(model)

    def loss_module(self, model: nn.Module) -> nn.Module:
        return model  # the root: its forward gathers the weights no unit holds

    # ------------------------------------------------------------------ full weights
    def state_dict_for_save(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full weights gathered tensor by tensor onto rank 0's host memory (every rank calls it; the others get
        the names with empty tensors), in the sharded weights' dtype (fp32 masters under bf16)."""
        return self._gathered(model, trainable_only=False)

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self._gathered(model, trainable_only=True)

    def _gathered(self, model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
        module = self.unwrap(model)
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        out: dict[str, torch.Tensor] = {}
        for name, value in module.state_dict().items():
            if trainable_only and name not in trainable:
                continue
            whole = full_tensor(value)  # a collective for a sharded tensor
            out[name] = whole.detach().to("cpu", copy=True) if self.is_main else torch.empty(0)
        return out

    @contextlib.contextmanager
    def full_parameters(self, model: nn.Module, modify: bool = False,
                        only: list[nn.Parameter] | None = None) -> Iterator[None]:
        """Whole parameters (the sharded values gathered, fp32 masters under bf16, not the compute copies) stand in
        for the shards on every rank (`only`: just those), read-only; the modules hold their shards again on exit.
        Not inside a forward. Writes go through the sharded checkpoints (`load_sharded`), never through here."""
        if modify:
            raise NotImplementedError("FSDP2 restores weights from its sharded checkpoints (load_sharded)")
        module = self.unwrap(model)
        wanted = None if only is None else {id(p) for p in only}
        swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        for owner in module.modules():
            for name, param in list(owner._parameters.items()):
                if param is None or (wanted is not None and id(param) not in wanted):
                    continue
                owner._parameters[name] = nn.Parameter(full_tensor(param.data).detach().clone(),
                                                       requires_grad=param.requires_grad)
                swapped.append((owner, name, param))
        try:
            yield
        finally:
            for owner, name, sharded in swapped:
                owner._parameters[name] = sharded

    # ------------------------------------------------------------------ checkpoints
    def save_sharded(self, directory: str, model: nn.Module) -> None:
        """Trainable weights and optimizer state, each rank its shards (`torch.distributed.checkpoint`)."""
        assert self._checkpointer is not None, "setup() first"
        self._checkpointer.save_model(os.path.join(directory, MODEL_DIR))
        self.save_optimizer(directory)

    def load_sharded(self, directory: str, model: nn.Module) -> None:
        assert self._checkpointer is not None, "setup() first"
        self._checkpointer.load_model(os.path.join(directory, MODEL_DIR))
        self.load_optimizer(directory)

    def save_optimizer(self, directory: str) -> None:
        assert self._checkpointer is not None, "setup() first"
        self._checkpointer.save_optimizer(os.path.join(directory, OPTIMIZER_DIR))

    def load_optimizer(self, directory: str) -> None:
        assert self._checkpointer is not None, "setup() first"
        self._checkpointer.load_optimizer(os.path.join(directory, OPTIMIZER_DIR))

    def close(self) -> None:
        if dist.is_initialized():
            distributed.barrier()
        distributed.destroy()


def _join_group(backend: str | None) -> distributed.DistEnv:
    """torchrun's process group, or a one-process group of this process (FSDP2 needs a group; a run also resumes a
    sharded checkpoint on one process), started from an in-memory store without touching the environment."""
    env = distributed.read_env()
    backend = backend or distributed.default_backend()
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if not dist.is_initialized():
        if env.distributed:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return distributed.DistEnv(env.rank, env.local_rank, env.world_size, dist.get_backend(), env.device)
