"""ZeRO-3 with the feature cache on, 2 CPU processes: the cache is filled before the engine starts, no rank runs
the (partitioned) encoder during training, an undecodable image skips its record, and the losses match one process."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.train.harness import run_ranks

ZERO3 = Path(__file__).resolve().parents[2] / "configs" / "deepspeed" / "zero3.json"


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
    ranks, output = run_ranks(multi_cfg, tmp_path, "zero3", no_encoder_in_fit=True)
    multi = ranks[0]
    assert "feature cache filled before training" in output
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
    run_ranks(multi_cfg, tmp_path, "zero3")
    assert len([p.name for p in shared.iterdir() if p.is_dir()]) == 1

