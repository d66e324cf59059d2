"""ZeRO-3 with the feature cache on, 2 CPU processes: the cache is filled before the engine starts, no rank runs
the (partitioned) encoder during training, an undecodable image skips its record, and the losses match one process."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
ZERO3 = HERE.parents[2] / "configs" / "deepspeed" / "zero3.json"


def _harness():  # noqa: ANN202 - the torchrun launcher shared with test_ddp.py
    spec = importlib.util.spec_from_file_location("ddp_harness", HERE.with_name("test_ddp.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def guard_encoder_during_training() -> None:
    """From the first step to the end of `fit`, any forward of the vision encoder raises on the rank that runs it."""
    import train.loop

    real_fit = train.loop.Trainer.fit

    def fit(self):  # noqa: ANN001, ANN202
        encoder = self.strategy.unwrap(self.model).vision_encoder

        def refuse(*_):  # noqa: ANN002, ANN202
            raise AssertionError(f"rank {self.strategy.rank} ran the vision encoder during training")

        handle = encoder.register_forward_pre_hook(refuse)
        try:
            return real_fit(self)
        finally:
            handle.remove()

    train.loop.Trainer.fit = fit


def run_worker(config_json: str, out_json: str) -> None:
    from train.config import config_from_dict
    from train.recipes import run

    guard_encoder_during_training()
    result = run(config_from_dict(json.loads(Path(config_json).read_text())))
    # Skips are counted by the rank whose micro-batch held the record: each rank writes its own.
    Path(f"{out_json}.{os.environ.get('RANK', '0')}").write_text(
        json.dumps({"losses": result.losses, "steps": result.steps, "skipped": result.skipped}))


def _world_with_corrupt_image(tiny_world: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    shutil.copytree(tiny_world["images"], images)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    records = json.loads(tiny_world["data"].read_text())
    records[1] = {"id": "corrupt-img", "image": "corrupt.png",
                  "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    return data, images


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_with_feature_cache_fills_first_and_matches_one_process(make_cfg, tiny_world, tmp_path: Path) -> None:
    from train.recipes import run

    data, images = _world_with_corrupt_image(tiny_world, tmp_path)
    common = dict(recipe="align", model={"template": "plain"}, feature_cache=True, global_batch_size=8,
                  max_steps=3, save_every=0, data={"data_path": [str(data)], "image_folder": str(images),
                        "max_skip_ratio": 1.0})  # the corrupt image is skipped on purpose
    single_cfg = make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"),
                          feature_cache_dir=str(tmp_path / "fc_single"), **common)
    single = run(single_cfg)  # one process: the cache fills lazily, during training
    multi_cfg = make_cfg(micro_batch_size=2, strategy="deepspeed", deepspeed_config=str(ZERO3),
                         output_dir=str(tmp_path / "zero3"), feature_cache_dir=str(tmp_path / "fc_zero3"), **common)
    cfg_path, out_path = tmp_path / "zero3.json", tmp_path / "zero3_out.json"
    cfg_path.write_text(json.dumps(multi_cfg.to_dict()))
    done = _harness().launch(HERE, [str(cfg_path), str(out_path)])
    ranks = [json.loads(Path(f"{out_path}.{rank}").read_text()) for rank in (0, 1)]
    multi = ranks[0]
    assert "feature cache filled before training" in done.stdout + done.stderr
    assert multi["steps"] == single.steps == 3
    assert single.skipped == {"image": 1}
    assert sum(r["skipped"].get("image", 0) for r in ranks) == 1 and all(set(r["skipped"]) <= {"image"} for r in ranks)
    assert multi["losses"] == pytest.approx(single.losses, rel=1e-5, abs=0)
    from train.feature_cache import FeatureCache

    fingerprints = [p.name for p in (tmp_path / "fc_zero3").iterdir() if p.is_dir()]
    assert len(fingerprints) == 1
    cache = FeatureCache(tmp_path / "fc_zero3", fingerprints[0])
    good = sorted(str(p) for p in images.glob("*.png") if p.name != "corrupt.png")
    assert cache.missing(good) == [] and cache.missing([str(images / "corrupt.png")]) != []


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_and_one_process_key_the_feature_cache_alike(make_cfg, tmp_path: Path) -> None:
    """The fingerprint hashes the encoder's weights: under ZeRO-3 the (zero.Init-partitioned) encoder is gathered
    for it, so a shared `feature_cache_dir` holds ONE fingerprint directory, not one keyed by empty partitions."""
    from train.recipes import run

    shared = tmp_path / "fc"
    common = dict(recipe="align", model={"template": "plain"}, feature_cache=True, global_batch_size=4,
                  max_steps=1, save_every=0, feature_cache_dir=str(shared))
    run(make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common))
    multi_cfg = make_cfg(micro_batch_size=2, strategy="deepspeed", deepspeed_config=str(ZERO3),
                         output_dir=str(tmp_path / "zero3"), **common)
    cfg_path, out_path = tmp_path / "zero3.json", tmp_path / "zero3_out.json"
    cfg_path.write_text(json.dumps(multi_cfg.to_dict()))
    _harness().launch(HERE, [str(cfg_path), str(out_path)])
    assert len([p.name for p in shared.iterdir() if p.is_dir()]) == 1


if __name__ == "__main__":
    run_worker(sys.argv[1], sys.argv[2])
