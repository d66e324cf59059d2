"""Feature cache: exact round trip, memory mapping, invalidation (encoder, preprocessing, image), concurrent writers."""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.feature_cache import FeatureCache, FeatureCacheError, encoder_fingerprint
from vision_encoders.config import VisionEncoderConfig
from vision_encoders.registry import load_vision_encoder
from vision_encoders.testing import make_tiny_clip


def _images(directory: Path, n: int, seed: int = 0) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = directory / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_round_trip_is_exact_and_memory_mapped(tmp_path: Path) -> None:
    keys = _images(tmp_path / "img", 3)
    feats = torch.randn(3, 5, 4)
    cache = FeatureCache(tmp_path / "cache", "ab12", shard_size=2)
    assert cache.get(keys) is None
    cache.put(keys, feats)  # 3 rows with shard_size 2: one shard written now, one row pending
    assert torch.equal(cache.get(keys), feats)
    cache.flush()
    reopened = FeatureCache(tmp_path / "cache", "ab12")
    got = reopened.get([keys[2], keys[0]])
    assert torch.equal(got, feats[[2, 0]])
    assert len(reopened) == 3
    assert all(isinstance(a, np.memmap) for a in reopened._arrays.values()) and reopened._arrays
    assert len(list((tmp_path / "cache" / "ab12" / "shards").glob("*.npy"))) == 2


def test_partial_hit_is_a_miss(tmp_path: Path) -> None:
    keys = _images(tmp_path / "img", 3)
    cache = FeatureCache(tmp_path / "cache", "ab12")
    cache.put(keys[:2], torch.ones(2, 2, 2))
    cache.flush()
    assert cache.get(keys) is None
    assert torch.equal(cache.get(keys[:2]), torch.ones(2, 2, 2)) and cache.get([keys[2]]) is None


def test_float16_storage_and_shape_errors(tmp_path: Path) -> None:
    keys = _images(tmp_path / "img", 2)
    cache = FeatureCache(tmp_path / "cache", "cd", dtype="float16")
    feats = torch.tensor([[[0.1, 1000.0]], [[-2.5, 3.0]]])
    cache.put(keys, feats)
    cache.flush()
    got = FeatureCache(tmp_path / "cache", "cd").get(keys)
    assert got.dtype == torch.float32
    assert torch.allclose(got, feats, rtol=1e-3)
    with pytest.raises(FeatureCacheError, match="shape"):
        cache.put(keys, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        cache.put(keys, torch.full((2, 1, 2), float("nan")))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        cache.get([str(tmp_path / "nope.png")])


def test_edited_image_is_a_miss_in_stat_mode_and_touch_is_a_hit_in_content_mode(tmp_path: Path) -> None:
    keys = _images(tmp_path / "img", 2)
    stat_cache = FeatureCache(tmp_path / "cache", "aa")
    content_cache = FeatureCache(tmp_path / "cache", "bb", identity="content")
    for cache in (stat_cache, content_cache):
        cache.put(keys, torch.randn(2, 3, 4))
        cache.flush()
    st = os.stat(keys[0])
    os.utime(keys[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert stat_cache.get(keys) is None
    assert content_cache.get(keys) is not None
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(keys[1])  # new content
    assert content_cache.get(keys) is None
    assert stat_cache.get(keys[1:]) is None


def test_fingerprint_tracks_weights_layer_and_preprocessing(tmp_path: Path, clip_spec: str) -> None:
    base_cfg = VisionEncoderConfig(spec=clip_spec)
    encoder = load_vision_encoder(base_cfg)
    processor = encoder.image_processor()
    fp = encoder_fingerprint(encoder, processor)
    # Same files, loaded again: same fingerprint (the cache survives restarts).
    again = load_vision_encoder(base_cfg)
    assert encoder_fingerprint(again, again.image_processor()) == fp
    other_layer = load_vision_encoder(replace(base_cfg, select_layer=-1))
    assert encoder_fingerprint(other_layer, other_layer.image_processor()) != fp
    assert encoder_fingerprint(encoder, replace(processor, aspect_ratio="resize")) != fp
    with torch.no_grad():
        next(again.parameters()).add_(1e-6)
    assert encoder_fingerprint(again, processor) != fp
    other_seed = load_vision_encoder(VisionEncoderConfig(spec=make_tiny_clip(tmp_path / "clip2", seed=1)))
    assert encoder_fingerprint(other_seed, processor) != fp


def _writer(root: str, keys: list[str], seed: int, rounds: int) -> None:
    torch.manual_seed(0)
    table = torch.randn(len(keys), 4, 8)  # the same "features" in every process, as a real encoder would give
    cache = FeatureCache(root, "ff", shard_size=3)
    order = np.random.default_rng(seed).permutation(len(keys))
    for _ in range(rounds):
        for i in order:
            cache.put([keys[i]], table[i : i + 1])
            got = cache.get([keys[i]])
            assert got is not None and torch.equal(got, table[i : i + 1])
    cache.flush()


def test_two_processes_writing_concurrently_do_not_corrupt(tmp_path: Path) -> None:
    keys = _images(tmp_path / "img", 12)
    root = str(tmp_path / "cache")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(root, keys, s, 2)) for s in (1, 2)]
    for p in procs:
        p.start()
    reader = FeatureCache(root, "ff")
    while any(p.is_alive() for p in procs):
        hit = reader.get(keys[:1])
        assert hit is None or hit.shape == (1, 4, 8)  # never a torn entry
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.manual_seed(0)
    table = torch.randn(len(keys), 4, 8)
    assert torch.equal(FeatureCache(root, "ff").get(keys), table)
    assert not list(Path(root, "ff", "shards").glob(".*tmp"))  # no leftover partial files


def test_get_or_compute_encodes_only_missing_images_once(tmp_path: Path) -> None:
    keys = _images(tmp_path / "img", 4)
    table = {k: torch.full((2, 3), float(i)) for i, k in enumerate(keys)}
    seen: list[str] = []

    def encode(paths: list[str]) -> torch.Tensor:
        seen.extend(paths)
        return torch.stack([table[p] for p in paths])

    cache = FeatureCache(tmp_path / "cache", "ee", shard_size=100)
    first = cache.get_or_compute([keys[0], keys[1], keys[0]], encode)
    assert seen == [keys[0], keys[1]]
    assert torch.equal(first, torch.stack([table[keys[0]], table[keys[1]], table[keys[0]]]))
    second = cache.get_or_compute([keys[1], keys[2]], encode)
    assert seen == [keys[0], keys[1], keys[2]]
    assert torch.equal(second, torch.stack([table[keys[1]], table[keys[2]]]))
    cache.flush()
    reopened = FeatureCache(tmp_path / "cache", "ee")
    assert reopened.get([keys[3]]) is None and torch.equal(reopened.get(keys[:3]), torch.stack([table[k] for k in keys[:3]]))


@pytest.mark.slow
def test_align_losses_identical_with_and_without_cache(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """Phase 1 through the real recipe: no cache, cold cache (fills it), warm cache (reads it): same losses.
    With the cache on the dataset only resolves paths: a cold run decodes each image once (in the feature
    hook), a warm run decodes none."""
    import vlm.inputs as images  # the one image-file reader of training (`load_pixels`)
    from train.recipes import run

    cache_dir = str(tmp_path / "features")
    common = dict(recipe="align", model={"template": "plain"}, max_steps=3, feature_cache_dir=cache_dir)
    plain = run(make_cfg(output_dir=str(tmp_path / "off"), feature_cache=False, **common))
    decoded: list[str] = []
    real_load = images.load_image

    def counting_load(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        decoded.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(images, "load_image", counting_load)
    cold = run(make_cfg(output_dir=str(tmp_path / "cold"), feature_cache=True, **common))
    assert decoded and len(decoded) == len(set(decoded)), decoded  # only misses, once each
    shards = sorted(Path(cache_dir).glob("*/shards/*.npy"))
    assert shards, "the cold run must have written features"

    def no_decoding(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise AssertionError(f"a warm feature cache must not decode images, but {path} was loaded")

    monkeypatch.setattr(images, "load_image", no_decoding)
    warm = run(make_cfg(output_dir=str(tmp_path / "warm"), feature_cache=True, **common))
    assert plain.losses == pytest.approx(cold.losses, rel=1e-6, abs=0)
    assert plain.losses == pytest.approx(warm.losses, rel=1e-6, abs=0)
    assert sorted(Path(cache_dir).glob("*/shards/*.npy")) == shards  # warm run computed nothing new


def _records_with_corrupt_image(tiny_world: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny world's images plus one undecodable PNG, and 8 records of which one uses it."""
    import json
    import shutil

    images = tmp_path / "images"
    shutil.copytree(tiny_world["images"], images)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    records = json.loads(tiny_world["data"].read_text())[:8]
    records[2] = {"id": "corrupt-img", "image": "corrupt.png",
                  "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    return data, images


def test_cold_cache_skips_a_record_whose_image_cannot_be_decoded(make_cfg, tiny_world, tmp_path: Path) -> None:
    """With the cache on, images are decoded on first use (in the feature hook, not the dataset): a corrupt one
    drops its record from the batch, counted like the data layer's skips, and the run goes on."""
    from train.recipes import run

    data, images = _records_with_corrupt_image(tiny_world, tmp_path)
    result = run(make_cfg(data={"data_path": [str(data)], "image_folder": str(images), "max_skip_ratio": 1.0},
                          feature_cache=True, feature_cache_dir=str(tmp_path / "fc"), max_steps=-1, epochs=1))
    assert result.steps == 2
    assert result.skipped == {"image": 1}, result.skipped
    assert all(loss == loss for loss in result.losses)


def test_cold_cache_stops_on_a_corrupt_image_when_strict(make_cfg, tiny_world, tmp_path: Path) -> None:
    from conversation.errors import ImageLoadError
    from train.recipes import run

    data, images = _records_with_corrupt_image(tiny_world, tmp_path)
    with pytest.raises(ImageLoadError, match=r"corrupt\.png.*corrupt-img.*data\.guards\.strict"):
        run(make_cfg(data={"data_path": [str(data)], "image_folder": str(images), "strict": True},
                     feature_cache=True, feature_cache_dir=str(tmp_path / "fc"), max_steps=-1, epochs=1))
