"""ZeRO-2 (2 CPU processes), anyres: micro-step 0 is text-only on one rank and an image record on the other. The
text-only rank's `image_newline` must still get its (zero) gradient, else the ranks' gradient buckets differ."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train import harness

HERE = Path(__file__).resolve()
ZERO2 = HERE.parents[2] / "configs" / "deepspeed" / "zero2.json"
PINS = "(1x1),...,(2x2)"



@pytest.mark.distributed
@pytest.mark.slow
def test_zero2_anyres_with_a_text_only_rank_matches_one_process(make_cfg, tiny_world, tmp_path: Path) -> None:
    from train.recipes import run
    from vision_encoders.config import VisionEncoderConfig
    from vlm.model import VisionLanguageModel

    parts = tiny_world["root"] / "parts"
    vision = VisionEncoderConfig(spec=f"hf:{parts / 'vision_clip'}", image_aspect_ratio="anyres",
                                 image_grid_pinpoints=PINS)
    VisionLanguageModel.build(vision, "mlp2x_gelu", str(parts / "llm_llama"), "vicuna_v1").save(tmp_path / "base")
    records = json.loads(tiny_world["data"].read_text())
    two = [next(r for r in records if "image" not in r), next(r for r in records if "image" in r)]
    data = tmp_path / "two.json"
    data.write_text(json.dumps(two))  # one step of 2 records, one per rank: one rank is text-only whatever the order
    common = dict(model={"init_from": str(tmp_path / "base"), "template": "vicuna_v1"}, global_batch_size=2,
                  max_steps=1, save_every=0, data={"data_path": [str(data)]})
    single = run(make_cfg(micro_batch_size=2, output_dir=str(tmp_path / "single"), **common))
    z2 = make_cfg(micro_batch_size=1, strategy="deepspeed", deepspeed_config=str(ZERO2),
                  output_dir=str(tmp_path / "zero2"), **common)
    multi = harness.run_ranks(z2, tmp_path, "zero2")[0][0]
    assert multi["steps"] == single.steps == 1
    assert multi["losses"] == pytest.approx(single.losses, rel=1e-5)
    from safetensors.torch import load_file

    single_w = load_file(str(sorted((tmp_path / "single" / "checkpoints").glob("step-*"))[-1] / "trainable.safetensors"))
    multi_w = load_file(str(sorted((tmp_path / "zero2" / "checkpoints").glob("step-*"))[-1] / "trainable.safetensors"))
    import torch

    torch.testing.assert_close(multi_w["projector.image_newline.weight"], single_w["projector.image_newline.weight"],
                               rtol=0, atol=2e-5)
