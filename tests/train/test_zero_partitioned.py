"""DeepSpeed strategy invariants a CPU can check without a process group: one trainable dtype before
`deepspeed.initialize` (bf16 + LoRA), trainable-only ZeRO-3 gathers, standalone start, and the zero link."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
ZERO3 = REPO / "configs" / "deepspeed" / "zero3.json"
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture()
def standalone_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-process environment that the test restores (the strategy would otherwise set it for the session)."""
    for key, value in zip(ENV_KEYS, ("0", "1", "0", "127.0.0.1", "29999")):
        monkeypatch.setenv(key, value)


def test_all_trainable_parameters_share_one_dtype_before_deepspeed_initialize(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standalone_env: None) -> None:
    """ZeRO-3 + LoRA + bf16: peft upcasts the adapters to fp32 next to the bf16 projector; DeepSpeed casts nothing
    for a zero.Init model, and ZeRO-3's flat buffer asserts one dtype. The strategy casts before initialize."""
    import train.strategies.deepspeed_zero as ds
    from train.config import LoraSettings
    from train.lora import apply_lora
    from vlm.testing import make_tiny_vlm

    model = make_tiny_vlm(tmp_path).to(torch.bfloat16)
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32, torch.bfloat16}  # peft

    strategy = ds.DeepSpeedStrategy(ZERO3, micro_batch_size=1, global_batch_size=1, precision="fp32")
    real_resolve = ds.resolve_deepspeed_config
    monkeypatch.setattr(ds, "resolve_deepspeed_config",
                        lambda *a, **k: {**real_resolve(*a, **k), "bf16": {"enabled": True}})  # bf16 needs a GPU
    seen: dict[str, Any] = {}

    def initialize(model: nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> tuple:
        seen["dtypes"] = {p.dtype for p in model.parameters() if p.requires_grad}
        seen["optimizer"] = {p.dtype for group in optimizer.param_groups for p in group["params"]}
        return model, optimizer, None, None

    monkeypatch.setattr(strategy.deepspeed, "initialize", initialize)
    strategy.setup(model, lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]))
    assert seen["dtypes"] == {torch.bfloat16} and seen["optimizer"] == {torch.bfloat16}


class _Recorder:
    """Stands in for `deepspeed.zero`: records what each GatheredParameters call gathers."""

    def __init__(self) -> None:
        self.gathered: list[nn.Parameter] = []

    def GatheredParameters(self, params: list[nn.Parameter], modifier_rank: int | None = None):  # noqa: N802
        import contextlib

        self.gathered.extend(params)
        return contextlib.nullcontext()


def _zero3_strategy() -> tuple[Any, _Recorder]:
    from train.distributed import DistEnv
    from train.strategies.deepspeed_zero import DeepSpeedStrategy

    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # no process group, no engine: only the gathering
    recorder = _Recorder()
    strategy.deepspeed = SimpleNamespace(zero=recorder)
    strategy.resolved_config = {"zero_optimization": {"stage": 3}}
    strategy.env = DistEnv()
    return strategy, recorder


def _half_frozen() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    model[0].requires_grad_(False)
    model[1][1].requires_grad_(False)
    return model


def test_zero3_checkpoints_and_resume_gather_only_trainable_parameters() -> None:
    """A LoRA / projector checkpoint under ZeRO-3 must not materialise the frozen model on every rank."""
    from train.checkpointing import trainable_state

    strategy, recorder = _zero3_strategy()
    model = _half_frozen()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    weights = trainable_state(strategy, model)
    assert sorted(weights) == ["1.0.bias", "1.0.weight"]
    assert recorder.gathered and {id(p) for p in recorder.gathered} == trainable
    recorder.gathered.clear()
    with strategy.full_parameters(model, modify=True):  # the resume's write
        pass
    assert {id(p) for p in recorder.gathered} == trainable
    recorder.gathered.clear()
    with strategy.full_parameters(model):  # reading the whole model (final save) still gathers everything
        pass
    assert len(recorder.gathered) == len(list(model.parameters()))


def test_zero_link_is_safe_on_an_empty_partition() -> None:
    """Under ZeRO-3 a parameter outside its module's forward is an empty partition: indexing it would fail."""
    from train.step import _zero_link

    model = nn.Module()
    model.empty = nn.Parameter(torch.empty(0))
    model.full = nn.Parameter(torch.ones(3))
    link = _zero_link(model, torch.device("cpu"))
    link.backward()
    assert link.item() == 0.0 and torch.count_nonzero(model.full.grad) == 0


@pytest.mark.slow
def test_deepspeed_strategy_runs_standalone_without_torchrun(tmp_path: Path) -> None:
    """`vlm train` with strategy=deepspeed in one plain process: no MPI discovery (no mpi4py needed)."""
    script = """
import torch
from train.strategies.deepspeed_zero import DeepSpeedStrategy
from vlm.testing import make_tiny_vlm
s = DeepSpeedStrategy({"zero_optimization": {"stage": 2}}, micro_batch_size=1, global_batch_size=1,
                      precision="fp32")
model = make_tiny_vlm("parts")
model.requires_grad_(False)
model.projector.requires_grad_(True)
s.setup(model, lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1))
assert torch.distributed.get_world_size() == 1
s.close()
print("standalone ok")
"""
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert done.returncode == 0 and "standalone ok" in done.stdout, done.stderr[-3000:]


def test_a_projector_only_final_save_under_zero3_gathers_what_it_writes(make_cfg, tmp_path: Path) -> None:
    """Phase 1 (and LoRA) outputs hold the projector, the adapters and the added tokens' rows: under ZeRO-3 the
    final save gathers those, not the frozen LLM and vision tower."""
    from train.recipes import build_model, prepare_model, save_final_model
    from vlm.model import VisionLanguageModel

    cfg = make_cfg(recipe="align", model={"template": None}, output_dir=str(tmp_path / "out"))
    model = build_model(cfg)
    prepare_model(model, cfg)
    strategy, recorder = _zero3_strategy()
    save_final_model(cfg, model, strategy)
    gathered = {id(p) for p in recorder.gathered}
    expected = {id(p) for p in model.projector.parameters()} | {id(model.llm.get_input_embeddings().weight),
                                                              id(model.llm.get_output_embeddings().weight)}
    assert gathered == expected
    assert not gathered & {id(p) for p in model.vision_encoder.parameters()}
    reloaded = VisionLanguageModel.load(tmp_path / "out")  # and the output is the usual projector-only model
    for (name, a), (_, b) in zip(model.projector.named_parameters(), reloaded.projector.named_parameters()):
        assert torch.equal(a, b), name


def test_a_full_final_save_under_zero3_never_gathers_the_llm_whole(make_cfg, tmp_path: Path) -> None:
    """Phase 2 full: the LLM reaches rank 0's host module by module (no gather holds all of it), the vision tower
    and the projector are gathered whole; the output reloads with the model's weights."""
    from train.recipes import build_model, prepare_model, save_final_model
    from vlm.model import VisionLanguageModel

    cfg = make_cfg(output_dir=str(tmp_path / "out"))
    model = build_model(cfg)
    prepare_model(model, cfg)
    strategy, recorder = _zero3_strategy()
    strategy.user_config = {"zero_optimization": {"stage": 3}}
    calls: list[list[nn.Parameter]] = []
    gather = recorder.GatheredParameters
    recorder.GatheredParameters = lambda params, modifier_rank=None: (calls.append(list(params)),
                                                                      gather(params, modifier_rank))[1]
    save_final_model(cfg, model, strategy)
    llm = {id(p) for p in model.llm.parameters()}
    largest = max(len(list(m.parameters(recurse=False))) for m in model.llm.modules())
    assert all(len({id(p) for p in call} & llm) <= largest for call in calls)
    reloaded = VisionLanguageModel.load(tmp_path / "out")
    ours = dict(model.named_parameters())
    for name, value in reloaded.named_parameters():
        assert torch.equal(value, ours[name]), name
