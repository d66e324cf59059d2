"""Packed training runs: the same losses as unpacked (same samples per step), the self-check stopping a leaking
run, packer state in checkpoints, exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train.checkpointing import list_checkpoints
from train.config import ConfigError
from train.run_logger import read_metrics
from train.pack_check import PackingCheckError


def packed(make_cfg, **over):
    data = {"packing": True, "pack_length": 1024, "group_by": "modality_length", **over.pop("data", {})}
    return make_cfg(data=data, **over)


def test_config_checks() -> None:
    from train.config import DataConfig, TrainConfig
    from train.rules import check_config

    cfg = TrainConfig(data=DataConfig(data_path=["x"], max_length=256, packing=True, pack_length=128))
    cfg.model.init_from = "m"
    with pytest.raises(ConfigError, match="shorter than data.max_length=256"):
        check_config(cfg)
    cfg.data.packing = False
    with pytest.raises(ConfigError, match="data.packing is false"):
        check_config(cfg)
    cfg.data.pack_length = None
    check_config(cfg)
    assert DataConfig(max_length=300).resolved_pack_length() == 300


def test_packed_run_trains_the_same_losses_as_unpacked(make_cfg, tmp_path, capsys) -> None:
    """Packing happens inside each step's samples (grouped as an unpacked run groups them), so a packed step trains
    exactly the unpacked step's samples: with isolation the losses agree to float32 rounding."""
    from train.recipes import run

    common = dict(global_batch_size=8, micro_batch_size=2, max_steps=3)
    plain = run(make_cfg(output_dir=str(tmp_path / "plain"), data={"group_by": "modality_length"}, **common))
    cfg = packed(make_cfg, output_dir=str(tmp_path / "packed"), **common)
    result = run(cfg)
    assert result.losses == pytest.approx(plain.losses, rel=1e-5, abs=0)
    err = capsys.readouterr().err
    assert "packing self-check passed" in err and "per row" in err and "samples per row" in err
    rows = read_metrics(tmp_path / "packed")
    assert all(r["samples_per_row"] > 1.5 for r in rows)  # several samples per row
    plain_rows = read_metrics(tmp_path / "plain")
    assert [r["samples"] for r in rows] == [r["samples"] for r in plain_rows] == [8.0] * 3
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in plain_rows]
    assert sum(r["padding_ratio"] for r in rows) < sum(r["padding_ratio"] for r in plain_rows)  # efficiency log
    state = json.loads((list_checkpoints(cfg.checkpoint.output_dir)[-1] / "data_rank0.json").read_text())
    assert state["pack_length"] == 1024 and (state["epoch"], state["position"]) == (1, 0) and len(state["digest"]) == 16


@pytest.mark.parametrize("path", ["mask", "varlen"])
def test_the_self_check_stops_a_run_whose_mask_leaks(make_cfg, tmp_path, monkeypatch, path: str) -> None:
    """A deliberately leaking mask (plain causal attention across the samples of a row; for the varlen path, whole
    rows as its segments) is caught before training."""
    import vlm.packing
    from train.recipes import run

    def leaking(sample_lengths, seq_len, *, dtype=None, device=None):
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
        return causal.expand(len(sample_lengths), 1, seq_len, seq_len)

    if path == "mask":  # the LLM stays on sdpa with a 4D mask
        monkeypatch.setattr(vlm.packing, "use_varlen_attention", lambda llm: False)
        monkeypatch.setattr(vlm.packing, "block_diagonal_mask", leaking)
    else:
        real = vlm.packing.flash_kwargs
        monkeypatch.setattr(vlm.packing, "flash_kwargs",
                            lambda lengths, n, device: real([[n]] * len(lengths), n, device))
    cfg = packed(make_cfg, output_dir=str(tmp_path / "leak"), global_batch_size=8, micro_batch_size=2)
    with pytest.raises(PackingCheckError, match=r"packing self-check failed: .*difference \d\.\d+e-\d+ > 1e-05"):
        run(cfg)
    assert not list_checkpoints(cfg.checkpoint.output_dir)  # nothing trained


def test_resume_with_packing_is_exact_and_refuses_other_packs(make_cfg, tmp_path) -> None:
    from train.recipes import run

    common = dict(global_batch_size=4, micro_batch_size=1, max_steps=6, save_every=3, keep_last=5)
    straight = run(packed(make_cfg, output_dir=str(tmp_path / "a"), **common))
    first = run(packed(make_cfg, output_dir=str(tmp_path / "b"), **{**common, "max_steps": 6}))
    assert first.losses == straight.losses
    # Resume from step 3 into a fresh directory: steps 4-6 as in the straight run, bit for bit.
    step3 = list_checkpoints(tmp_path / "b")[0]
    resumed = run(packed(make_cfg, output_dir=str(tmp_path / "c"), resume=str(step3), **common))
    assert resumed.resumed_from == step3 and resumed.losses == straight.losses[3:]
    with pytest.raises(ValueError, match="pack_length"):
        run(packed(make_cfg, output_dir=str(tmp_path / "d"), resume=str(step3), data={"pack_length": 512}, **common))
    with pytest.raises(ValueError, match="saved with data.packing=True"):
        run(make_cfg(output_dir=str(tmp_path / "e"), resume=str(step3), **common))


def test_length_cache_is_shared_read_on_resume_and_rebuilt_when_corrupt(make_cfg, tmp_path, monkeypatch,
                                                                        caplog) -> None:
    """Exact lengths are computed once into data.length_cache_dir; a resume reads them (tokenizing nothing) and
    trains the straight run's steps; a corrupt cache file is recomputed with a warning, the losses unchanged."""
    import logging

    from instruct_data import length_cache
    from train.recipes import run

    shared = tmp_path / "lengths"
    common = dict(global_batch_size=4, micro_batch_size=1, max_steps=6, save_every=3, keep_last=5,
                  data={"length_cache_dir": str(shared)})
    straight = run(packed(make_cfg, output_dir=str(tmp_path / "a"), **common))
    (cache,) = shared.glob("lengths-*.npz")
    assert not (tmp_path / "a" / "lengths").exists()  # the shared folder, not the run's

    def boom(*args, **kwargs):
        raise AssertionError("a warm length cache tokenizes nothing")

    with monkeypatch.context() as m:
        m.setattr(length_cache, "compute_lengths", boom)
        step3 = list_checkpoints(tmp_path / "a")[0]
        resumed = run(packed(make_cfg, output_dir=str(tmp_path / "b"), resume=str(step3), **common))
    assert resumed.losses == straight.losses[3:]
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="instruct_data.length_cache"):
        again = run(packed(make_cfg, output_dir=str(tmp_path / "c"), **common))
    assert again.losses == straight.losses
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    assert length_cache.read_cache(cache, json.loads(bytes(np.load(cache)["key"]).decode())) is not None


def test_packing_with_the_feature_cache_and_a_corrupt_image(make_cfg, tiny_world, tmp_path) -> None:
    """Phase 1 with the feature cache: packed = unpacked losses; a record whose image cannot be decoded is dropped
    from its packed row (its row-mates train) and counted, as unpacked."""
    from train.recipes import run
    from tests.train.test_feature_cache import _records_with_corrupt_image

    common = dict(recipe="align", model={"template": "plain"}, max_steps=3, feature_cache=True,
                  global_batch_size=8, micro_batch_size=2)
    plain = run(make_cfg(output_dir=str(tmp_path / "off"), feature_cache_dir=str(tmp_path / "fc1"), **common))
    cfg = packed(make_cfg, output_dir=str(tmp_path / "on"), feature_cache_dir=str(tmp_path / "fc2"),
                 data={"group_by": "none"}, **common)
    assert run(cfg).losses == pytest.approx(plain.losses, rel=1e-5, abs=0)
    data, images = _records_with_corrupt_image(tiny_world, tmp_path)
    bad = {"data_path": [str(data)], "image_folder": str(images), "group_by": "none", "max_skip_ratio": 1.0}
    common.update(max_steps=-1, epochs=1, global_batch_size=4)
    unpacked = run(make_cfg(output_dir=str(tmp_path / "bad_off"), data=bad, feature_cache_dir=str(tmp_path / "fc3"),
                            **common))
    result = run(packed(make_cfg, output_dir=str(tmp_path / "bad_on"), data=bad,
                        feature_cache_dir=str(tmp_path / "fc4"), **common))
    assert result.steps == unpacked.steps == 2 and result.skipped == unpacked.skipped == {"image": 1}
    assert result.losses == pytest.approx(unpacked.losses, rel=1e-5, abs=0)


def test_packing_with_lora(make_cfg, tmp_path) -> None:
    from train.recipes import run

    common = dict(llm_mode="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}, global_batch_size=8,
                  micro_batch_size=2, max_steps=2)
    plain = run(make_cfg(output_dir=str(tmp_path / "off"), **common))
    result = run(packed(make_cfg, output_dir=str(tmp_path / "on"), data={"group_by": "none"}, **common))
    assert result.losses == pytest.approx(plain.losses, rel=1e-5, abs=0)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_split_the_lengths_and_read_them_back(make_cfg, tmp_path) -> None:
    """Under torchrun each rank tokenizes half the records and one all-reduce gives every rank all lengths: the
    cache file is the one a single process writes (same name, same lengths); a second 2-rank run reads it."""
    from tests.train.harness import run_ranks
    from train.recipes import run

    def cfg(name, cache, strategy="ddp"):
        return packed(make_cfg, output_dir=str(tmp_path / name), global_batch_size=4, micro_batch_size=1,
                      max_steps=2, data={"length_cache_dir": str(tmp_path / cache)}, strategy=strategy)

    run(cfg("one", "single", strategy="single"))
    (single,) = (tmp_path / "single").glob("lengths-*.npz")
    cold, _ = run_ranks(cfg("cold", "shared"), tmp_path, "cold")
    (shared,) = (tmp_path / "shared").glob("lengths-*.npz")
    assert shared.name == single.name
    assert np.array_equal(np.load(shared)["lengths"], np.load(single)["lengths"])
    stamp = shared.stat().st_mtime_ns
    warm, _ = run_ranks(cfg("warm", "shared"), tmp_path, "warm")
    assert shared.stat().st_mtime_ns == stamp  # read, not rewritten
    assert [r["losses"] for r in warm] == [r["losses"] for r in cold]


def test_a_full_audit_fills_the_length_cache_the_packed_run_reads(make_cfg, tmp_path, monkeypatch, capsys) -> None:
    """`vlm data audit` of a packed config stores the lengths it measured (spot-checked against training's own
    measure) under training's key: the run after it tokenizes nothing and trains what a cold run trains."""
    import yaml

    from app.cli import main
    from instruct_data import length_cache
    from train.recipes import run

    def cfg(name, cache):
        return packed(make_cfg, output_dir=str(tmp_path / name), global_batch_size=4, micro_batch_size=1,
                      max_steps=2, data={"length_cache_dir": str(tmp_path / cache)})

    cold = run(cfg("cold", "cold_cache"))
    (reference,) = (tmp_path / "cold_cache").glob("lengths-*.npz")
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg("warm", "audited").to_dict()))
    assert main(["data", "audit", str(path), "--workers", "1", "--out", str(tmp_path / "a")]) == 0
    assert "packing's exact lengths written to" in capsys.readouterr().out
    (stored,) = (tmp_path / "audited").glob("lengths-*.npz")
    assert stored.name == reference.name
    assert np.array_equal(np.load(stored)["lengths"], np.load(reference)["lengths"])

    def boom(*args, **kwargs):
        raise AssertionError("the audit filled the cache: nothing to tokenize")

    monkeypatch.setattr(length_cache, "compute_lengths", boom)
    assert run(cfg("warm", "audited")).losses == cold.losses
    assert main(["data", "audit", str(path), "--workers", "1", "--out", str(tmp_path / "b")]) == 0
    assert "packing's exact lengths already in" in capsys.readouterr().out
