"""ZeRO-3 (2 CPU processes) with the timm and open_clip encoders, whose position embeddings and class token are read
outside their owning module's forward: registered with the encoder, they are gathered also in a forward outside the
engine's (where DeepSpeed does not discover them by itself), and the run matches one process."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.train import harness

HERE = Path(__file__).resolve()
ZERO3 = HERE.parents[2] / "configs" / "deepspeed" / "zero3.json"



def encode_before_training() -> None:
    """Every rank runs the partitioned encoder once outside the engine (as the packing self-check runs the model)
    right before the first step; the features' shape is checked."""
    import torch

    import train.loop

    real_fit = train.loop.Trainer.fit

    def fit(self):  # noqa: ANN001, ANN202
        encoder = self.strategy.unwrap(self.model).vision_encoder
        with torch.no_grad():
            features = encoder(torch.zeros(2, 3, encoder.image_size, encoder.image_size))
        assert features.shape == (2, encoder.num_tokens, encoder.hidden_size), features.shape
        return real_fit(self)

    train.loop.Trainer.fit = fit


def run_worker(config_json: str, out_json: str) -> None:
    from train.config import config_from_dict
    from train.recipes import run

    encode_before_training()
    result = run(config_from_dict(json.loads(Path(config_json).read_text())))
    if os.environ.get("RANK", "0") == "0":
        Path(out_json).write_text(json.dumps({"losses": result.losses, "steps": result.steps}))


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["timm", "open_clip"])
def test_zero3_with_a_timm_or_open_clip_encoder_matches_one_process(encoder: str, make_cfg, tmp_path: Path) -> None:
    """The tiny encoder's position embedding (17 x 32) is above the tiny LLM's persistence threshold (10 x 32), so
    ZeRO-3 partitions it: read ungathered it is an empty tensor (a size mismatch)."""
    from train.recipes import run
    from vlm.testing import make_tiny_vlm

    make_tiny_vlm(tmp_path / "parts", encoder=encoder).save(tmp_path / "base")
    common = dict(model={"init_from": str(tmp_path / "base")}, global_batch_size=4, max_steps=2, save_every=0)
    single = run(make_cfg(micro_batch_size=2, output_dir=str(tmp_path / "single"), **common))
    z3_cfg = make_cfg(micro_batch_size=1, strategy="deepspeed", deepspeed_config=str(ZERO3),
                      output_dir=str(tmp_path / "z3"), **common)
    cfg_path, out_path = tmp_path / "z3.json", tmp_path / "z3_out.json"
    cfg_path.write_text(json.dumps(z3_cfg.to_dict()))
    harness.launch(HERE, [str(cfg_path), str(out_path)])
    multi = json.loads(out_path.read_text())
    assert multi["steps"] == single.steps
    assert multi["losses"] == pytest.approx(single.losses, rel=1e-4)


if __name__ == "__main__":
    run_worker(sys.argv[1], sys.argv[2])
