"""DeepSpeed: "auto" filling and CPU refusals of the JSON config; 2-process ZeRO-2 / ZeRO-3 runs match one process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.harness import assert_same_run, final_weights, run_distributed
from train.strategies.deepspeed_config import DeepSpeedConfigError, load_json_config, resolve_deepspeed_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "deepspeed"


def _resolve(user: dict, **over) -> dict:
    kw = dict(micro_batch_size=2, global_batch_size=16, world_size=2, max_grad_norm=1.0, bf16=False, on_gpu=False,
              hidden_size=64)
    kw.update(over)
    return resolve_deepspeed_config(user, **kw)


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_shipped_configs_resolve_on_cpu(name: str) -> None:
    cfg = _resolve(load_json_config(CONFIGS / f"{name}.json"))
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (
        16, 2, 4)
    assert cfg["gradient_clipping"] == 1.0
    assert cfg["bf16"]["enabled"] is False and cfg["fp16"]["enabled"] is False
    zero = cfg["zero_optimization"]
    assert zero["reduce_bucket_size"] == 64 * 64
    if zero["stage"] == 3:
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
        assert zero["stage3_param_persistence_threshold"] == 640
    if name == "zero3_offload":
        assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}  # no pinning without CUDA
        assert cfg["zero_force_ds_cpu_optimizer"] is False
    assert "auto" not in json.dumps(cfg)


def test_bf16_follows_precision_on_gpu_only() -> None:
    user = load_json_config(CONFIGS / "zero2.json")
    assert _resolve(user, bf16=True, on_gpu=True)["bf16"]["enabled"] is True
    with pytest.raises(DeepSpeedConfigError, match="bf16, which needs a GPU"):
        _resolve(user, bf16=True, on_gpu=False)
    with pytest.raises(DeepSpeedConfigError, match="fp16, which needs a GPU"):
        _resolve({**user, "fp16": {"enabled": True}})


def test_impossible_or_conflicting_configs_are_refused() -> None:
    nvme = {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/x"}}}
    with pytest.raises(DeepSpeedConfigError, match="offload_param.device=nvme cannot run on a CPU"):
        _resolve(nvme)
    with pytest.raises(DeepSpeedConfigError, match="train_batch_size=32"):
        _resolve({"train_batch_size": 32})
    with pytest.raises(DeepSpeedConfigError, match="'optimizer' section"):
        _resolve({"optimizer": {"type": "AdamW"}})
    with pytest.raises(DeepSpeedConfigError, match="not divisible"):
        _resolve({}, global_batch_size=6, micro_batch_size=4)
    with pytest.raises(DeepSpeedConfigError, match=r"still \"auto\".*zero_optimization.sub_group_size"):
        _resolve({"zero_optimization": {"stage": 2, "sub_group_size": "auto"}})
    with pytest.raises(DeepSpeedConfigError, match="offload_param needs stage 3"):
        _resolve({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})
    with pytest.raises(DeepSpeedConfigError, match="does not exist"):
        load_json_config(CONFIGS / "zero9.json")


def test_explicit_matching_values_are_kept(tmp_path: Path) -> None:
    cfg = _resolve({"train_batch_size": 16, "gradient_accumulation_steps": 4, "zero_optimization": {"stage": 1}})
    assert cfg["train_batch_size"] == 16 and cfg["zero_optimization"] == {"stage": 1}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DeepSpeedConfigError, match="bad.json.*not valid JSON"):
        load_json_config(bad)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload", "zero2_packed"])
def test_zero_two_processes_match_one(stage: str, make_cfg, tmp_path: Path) -> None:
    """Instruct run, 2 ranks x micro 2 x accumulation 2 vs one process x micro 4 x 2 (same samples per step).

    ZeRO flattens gradients into buckets and reduce-scatters them (ZeRO-3 also re-gathers parameters),
    so sums run in another order than in one process: equal to float32 rounding, amplified a little by
    Adam over 3 steps, hence 1e-5 relative on losses and 2e-5 absolute on weights of scale ~0.2.
    """
    from train.recipes import run

    common: dict = dict(global_batch_size=8, max_steps=3, save_every=0)
    if stage.endswith("_packed"):  # sequence packing: each step packed whole, its rows shared out to ranks by cost
        stage = stage.removesuffix("_packed")
        common["data"] = {"packing": True, "pack_length": 1024}
    single_cfg = make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    ds_cfg = make_cfg(micro_batch_size=2, strategy="deepspeed", deepspeed_config=str(CONFIGS / f"{stage}.json"),
                      output_dir=str(tmp_path / stage), **common)
    multi = run_distributed(ds_cfg, tmp_path, stage)
    assert_same_run(single, multi, single_cfg.checkpoint.output_dir, ds_cfg.checkpoint.output_dir, loss_rtol=1e-5,
                            weight_atol=2e-5)
    # Saved under ZeRO-3 too: the output directory loads as a full model with the trained weights.
    from vlm.model import VisionLanguageModel

    loaded = VisionLanguageModel.load(ds_cfg.checkpoint.output_dir)
    params = dict(loaded.named_parameters())
    for key, value in final_weights(ds_cfg.checkpoint.output_dir).items():
        torch.testing.assert_close(params[key].detach(), value, rtol=0, atol=0, msg=key)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_resume_continues_exactly(stage: str, make_cfg, tmp_path: Path) -> None:
    """Each rank's ZeRO optimizer partition (weights_only load) + weights + RNG: step 3 after a resume from
    step 2 has the very loss of the uninterrupted run."""
    common = dict(global_batch_size=8, micro_batch_size=2, max_steps=3, strategy="deepspeed",
                  deepspeed_config=str(CONFIGS / f"{stage}.json"))
    full_cfg = make_cfg(save_every=2, output_dir=str(tmp_path / "full"), **common)
    full = run_distributed(full_cfg, tmp_path, "full")
    step2 = tmp_path / "full" / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in step2.glob("zero_optimizer_rank*.pt")) == ["zero_optimizer_rank0.pt",
                                                                          "zero_optimizer_rank1.pt"]
    resumed_cfg = make_cfg(resume=str(step2), output_dir=str(tmp_path / "resumed"), **common)
    resumed = run_distributed(resumed_cfg, tmp_path, "resumed")
    assert resumed["losses"] == [full["losses"][2]]


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_lora_on_a_partitioned_llm(make_cfg, tmp_path: Path) -> None:
    """The LLM is loaded partitioned (zero.Init); LoRA adapters are added to it, train, and the output reloads
    with the same loss curve as one process."""
    from train.recipes import run

    common = dict(global_batch_size=8, max_steps=2, save_every=0, llm_mode="lora")
    single = run(make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common))
    ds_cfg = make_cfg(micro_batch_size=2, strategy="deepspeed", deepspeed_config=str(CONFIGS / "zero3.json"),
                      output_dir=str(tmp_path / "z3lora"), **common)
    multi = run_distributed(ds_cfg, tmp_path, "z3lora")
    # Before any update: the same model. After one: Adam's first step divides LoRA's tiny gradients by their own
    # size, so reduction-order rounding shows (5e-4 relative here with or without zero.Init).
    assert multi["losses"][0] == pytest.approx(single.losses[0], rel=1e-5)
    assert multi["losses"][1] == pytest.approx(single.losses[1], rel=2e-3)
    from vlm.model import VisionLanguageModel

    VisionLanguageModel.load(ds_cfg.checkpoint.output_dir)  # adapters merged into the reloaded base
