"""Training with anyres on CPU: align builds and trains image_newline (no feature cache), resume is exact, DDP matches."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.harness import assert_same_run, run_distributed
from train.checkpointing import checkpoint_dir
from train.config import ConfigError
from train.recipes import run
from vision_encoders.config import VisionEncoderConfig

PINS = "(1x1),...,(2x2)"


def anyres_model(tiny_world, template: str | None = None) -> dict:
    parts = tiny_world["root"] / "parts"
    vision = {"spec": f"hf:{parts / 'vision_clip'}", "image_aspect_ratio": "anyres", "image_grid_pinpoints": PINS}
    return {"init_from": None, "template": template, "vision": vision, "llm": str(parts / "llm_llama")}


def test_align_trains_the_newline_without_a_feature_cache(make_cfg, tiny_world, tmp_path) -> None:
    cfg = make_cfg(recipe="align", model=anyres_model(tiny_world), max_steps=2, feature_cache=None,
                   output_dir=str(tmp_path / "align"))
    result = run(cfg)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    saved = load_file(str(tmp_path / "align" / "projector.safetensors"))
    from vlm.model import VisionLanguageModel

    model = VisionLanguageModel.load(tmp_path / "align")
    assert model.config.vision.anyres and torch.equal(model.projector.image_newline.weight, saved["image_newline.weight"])
    assert not (tmp_path / "align" / "feature_cache").exists()
    import json

    audit = json.loads((tmp_path / "align" / "audit.json").read_text())  # the pre-flight audit counted per size
    assert audit["image_tokens_per_image"]["min"] >= 16 + 1 and audit["num_image_tokens"] == 0
    with pytest.raises(ConfigError, match="anyres"):
        run(make_cfg(recipe="align", model=anyres_model(tiny_world), max_steps=1, feature_cache=True,
                     output_dir=str(tmp_path / "cached")))


def test_resume_continues_with_the_same_losses(make_cfg, tiny_world, tmp_path) -> None:
    common = dict(recipe="instruct", model=anyres_model(tiny_world, "vicuna_v1"), max_steps=4, save_every=2, keep_last=3,
                  global_batch_size=2, micro_batch_size=1, data={"group_by": "modality_length"})
    straight = run(make_cfg(**common, output_dir=str(tmp_path / "a")))
    resumed_dir = tmp_path / "b"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint_dir(tmp_path / "a", 2), checkpoint_dir(resumed_dir, 2))
    resumed = run(make_cfg(**common, resume="auto", output_dir=str(resumed_dir)))
    assert resumed.resumed_from is not None and len(resumed.losses) == 2  # steps 3 and 4 only
    assert resumed.losses == pytest.approx(straight.losses[-2:], rel=1e-6, abs=0)


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_matches_one_process(make_cfg, tiny_world, tmp_path) -> None:
    common = dict(recipe="instruct", model=anyres_model(tiny_world, "vicuna_v1"), global_batch_size=4, max_steps=2, save_every=0)
    single_cfg = make_cfg(micro_batch_size=2, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    ddp_cfg = make_cfg(micro_batch_size=1, strategy="ddp", output_dir=str(tmp_path / "ddp"), **common)
    multi = run_distributed(ddp_cfg, tmp_path, "ddp")
    assert_same_run(single, multi, single_cfg.checkpoint.output_dir, ddp_cfg.checkpoint.output_dir, loss_rtol=1e-5, weight_atol=1e-5)


def test_config_takes_pinpoints_as_a_list_or_the_range_form(make_cfg, tiny_world) -> None:
    listed = anyres_model(tiny_world)
    listed["vision"] = {**listed["vision"], "image_grid_pinpoints": [[32, 64], [64, 32]], "anyres_max_tiles": 4}
    cfg = make_cfg(recipe="align", model=listed)
    assert cfg.model.vision.image_grid_pinpoints == [[32, 64], [64, 32]] and cfg.model.vision.anyres_max_tiles == 4
    assert make_cfg(recipe="align", model=anyres_model(tiny_world)).model.vision.image_grid_pinpoints == PINS
    bad = anyres_model(tiny_world)
    bad["vision"] = {**bad["vision"], "image_grid_pinpoints": [["a", 1]]}
    with pytest.raises(ConfigError, match="image_grid_pinpoints"):
        make_cfg(recipe="align", model=bad)


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_matches_one_process(make_cfg, tiny_world, tmp_path) -> None:
    from vlm.model import VisionLanguageModel

    configs = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
    # start both runs from one saved anyres model: ZeRO-3 loads the LLM partitioned, which draws the random
    # initialisation of freshly built parts (projector, image_newline) differently than one process does
    parts = tiny_world["root"] / "parts"
    vision = VisionEncoderConfig(spec=f"hf:{parts / 'vision_clip'}", image_aspect_ratio="anyres", image_grid_pinpoints=PINS)
    VisionLanguageModel.build(vision, "mlp2x_gelu", str(parts / "llm_llama"), "vicuna_v1").save(tmp_path / "base")
    common = dict(recipe="instruct", model={"init_from": str(tmp_path / "base"), "template": "vicuna_v1"},
                  global_batch_size=4, max_steps=2, save_every=0)
    single_cfg = make_cfg(micro_batch_size=2, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    ds_cfg = make_cfg(micro_batch_size=1, strategy="deepspeed", deepspeed_config=str(configs / "zero3.json"),
                      output_dir=str(tmp_path / "zero3"), **common)
    multi = run_distributed(ds_cfg, tmp_path, "zero3")
    assert_same_run(single, multi, single_cfg.checkpoint.output_dir, ds_cfg.checkpoint.output_dir, loss_rtol=1e-5, weight_atol=2e-5)
    assert "projector.image_newline.weight" in load_file(str(sorted((tmp_path / "zero3" / "checkpoints").glob("step-*"))[-1]
                                                              / "trainable.safetensors"))
