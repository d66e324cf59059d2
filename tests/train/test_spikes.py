"""A bad record among good ones, end to end on the tiny model: named by the spike report (thumbnail, group norms),
its step replayed bit for bit from the checkpoint before it, and quarantined on resume with the position exact."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.train.conftest import _records
from train.checkpointing import list_checkpoints
from train.run_logger import read_metrics

BAD = "bad-white"
# The tiny LLM has 512 positions (vlm.testing): the bad answer is ~440 tokens of nonsense, the longest that fits
# max_length=512 beside the image tokens (the 4K-token answer, scaled to the tiny model).
MAX_LENGTH = 512
STEPS, LR = 30, 1e-2


def _nonsense(seed: int = 7, words: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(2, 4))) for _ in range(words))


@pytest.fixture(scope="module")
def spike_run(tiny_world, tmp_path_factory):  # noqa: ANN001, ANN201
    """One run of 30 steps over 24 good records and the bad one, checkpoints every 2 steps, every record's loss
    logged; returns (config factory, the run's directory, the bad record's step)."""
    from train.config import config_from_dict
    from train.recipes import run

    root = tmp_path_factory.mktemp("spike_world")
    images = root / "images"
    shutil.copytree(tiny_world["images"], images)
    Image.new("RGB", (40, 32), (255, 255, 255)).save(images / "white.png")
    records = _records(sorted(p.name for p in tiny_world["images"].glob("*.png")), 24)
    records.insert(13, {"id": BAD, "image": "white.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": _nonsense()}]})
    (root / "data.json").write_text(json.dumps(records))

    def make(out: Path, **over) -> object:  # noqa: ANN003
        data = {
            "recipe": "instruct",
            "model": {"init_from": str(tiny_world["base"]), "template": "vicuna_v1"},
            "data": {"data_path": [str(root / "data.json")], "image_folder": str(images), "max_length": MAX_LENGTH,
                     **over.pop("data", {})},
            "optim": {"lr": LR, "warmup_ratio": 0.0, "scheduler": "constant"},
            "schedule": {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": STEPS, "seed": 0},
            "engine": {"precision": "fp32"},
            "checkpoint": {"output_dir": str(out), "resume": "none", "save_every": 2, "keep_last": 10,
                           **over.pop("checkpoint", {})},
            "feature_cache": {"enabled": False},
            "log": {"tensorboard": False, "progress_bar": False, "per_sample": "every_step",
                    "spikes": {}},  # the defaults: z > 6 over a window of 50, judged from step 11
        }
        return config_from_dict(data)

    out = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        run(make(out))
    (out / "stderr.txt").write_text(printed.getvalue())
    bad_steps = [r["step"] for r in _per_sample(out) if r["id"] == BAD]
    return make, out, bad_steps


def _per_sample(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "per_sample.jsonl").read_text().splitlines()]


def test_the_bad_record_is_named_by_a_spike_report(spike_run) -> None:  # noqa: ANN001
    _, out, bad_steps = spike_run
    assert len(bad_steps) >= 3  # about once an epoch (6 steps)
    rows = _per_sample(out)
    metrics = {r["step"]: r for r in read_metrics(out)}
    for step in range(1, STEPS + 1):  # the per-record log makes up each step's loss
        mine = [r for r in rows if r["step"] == step]
        assert len(mine) == 4 and sum(r["supervised_tokens"] for r in mine) == metrics[step]["supervised_tokens"]
        weighted = sum(r["loss_sum"] for r in mine) / sum(r["supervised_tokens"] for r in mine)
        assert weighted == pytest.approx(metrics[step]["loss"], rel=1e-6)
    reports = sorted((out / "spikes").glob("step_*.json"))
    spiked = [json.loads(p.read_text()) for p in reports]
    named = [r for r in spiked if r["records"][0]["id"] == BAD]  # records come highest mean loss first
    # early on the loss falls fast and the bad record is not yet out of line; once the rest is learnt it is (its
    # mean loss ~5 against the others' ~0.3 at step 30)
    assert named and {r["step"] for r in spiked} <= set(bad_steps), [(r["step"], r["spiked"]) for r in spiked]
    assert bad_steps[-1] in {r["step"] for r in named}
    report = named[-1]
    assert report["spiked"]["loss"] > 6
    bad = report["records"][0]
    assert bad["supervised_tokens"] > 300 and len(report["records"]) == 4
    thumb = out / "spikes" / bad["images"][0]["thumbnail"]
    assert bad["images"][0]["image"].endswith("white.png") and thumb.is_file()
    with Image.open(thumb) as image:
        assert max(image.size) <= 64 and image.getpixel((0, 0)) == (255, 255, 255)
    assert set(report["group_grad_norms"]) == {"projector", "llm"}
    said = [line for line in (out / "stderr.txt").read_text().splitlines() if line.startswith("spike at step")]
    assert len(said) == len(reports) and f"spikes/step_{report['step']}.json" in said[-1] and BAD in said[-1]


def test_replay_reproduces_the_logged_loss_exactly(spike_run, capsys) -> None:  # noqa: ANN001
    """From the checkpoint at step N - 2 (one step re-run), and from the run's start for step 1; the run's
    checkpoints and metrics are untouched."""
    from train.recipes import replay_run

    make, out, bad_steps = spike_run
    step = bad_steps[-1] if bad_steps[-1] % 2 == 0 else bad_steps[-1] + 1  # an even step: its checkpoint is 2 back
    checkpoints = out / "checkpoints"
    before = {str(p): p.stat().st_mtime_ns for p in checkpoints.rglob("*") if p.is_file()}
    logged = {r["step"]: r["loss"] for r in read_metrics(out)}
    result = replay_run(make(out), step)
    assert result.loss == logged[step] and result.rerun == 1
    assert result.start is not None and result.start.name == f"step-{step - 2:08d}"
    printed = capsys.readouterr().out
    assert f"replay of step {step}" in printed and "mean loss" in printed
    assert {r.id for r in result.records} == {r["id"] for r in _per_sample(out) if r["step"] == step}
    first = replay_run(make(out), 1)
    assert first.start is None and first.loss == logged[1]
    after = {str(p): p.stat().st_mtime_ns for p in checkpoints.rglob("*") if p.is_file()}
    assert after == before and len(after) > 10
    assert {r["step"]: r["loss"] for r in read_metrics(out)} == logged


def test_a_replay_that_differs_exits_5_naming_the_difference(spike_run, capsys, tmp_path) -> None:  # noqa: ANN001
    from train.cli import main

    make, out, _ = spike_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    second = json.loads(lines[1])
    second["loss"] += 1e-9
    lines[1] = json.dumps(second)
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump(make(copy).to_dict()))
    code = main(argparse.Namespace(config=str(config), overrides=[], resume=None, print_config=False, replay_step=2))
    assert code == 5
    assert "step 2 replayed to loss" in capsys.readouterr().err


def test_quarantine_on_resume_skips_the_bad_record_at_the_same_position(spike_run, tmp_path, capsys) -> None:  # noqa: ANN001
    from train.cli import main

    make, out, bad_steps = spike_run
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    step = bad_steps[-1]
    start = [p for p in list_checkpoints(resumed) if int(p.name.split("-")[1]) < step][-1]
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump(make(resumed, data={"quarantine": [BAD]}).to_dict()))
    code = main(argparse.Namespace(config=str(config), overrides=[], resume=str(start), print_config=False,
                                   replay_step=None))
    assert code == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert "(quarantine: " in final and f"quarantined ['{BAD}']" in final
    before, after = _per_sample(out), _per_sample(resumed)
    at = int(start.name.split("-")[1])
    # the same records in the same steps, less the bad one; identical losses until it would have come
    for s in range(at + 1, STEPS + 1):
        ids_before = [r["id"] for r in before if r["step"] == s]
        assert [r["id"] for r in after if r["step"] == s] == [i for i in ids_before if i != BAD]
    first = {r["step"]: r["loss"] for r in read_metrics(out)}
    second = {r["step"]: r["loss"] for r in read_metrics(resumed)}
    assert all(second[s] == first[s] for s in range(1, step))
    assert second[step] != first[step] and BAD not in {r["id"] for r in after if r["step"] >= step}


@pytest.mark.slow
def test_replay_of_a_packed_run_restores_the_packs(make_cfg, tmp_path) -> None:
    """Packed rows: the packer's state comes back with the checkpoint, so step 5 (from step 4's checkpoint), step 4
    (from step 2's, one step re-run) and step 2 (from the start) replay exactly, and each record's loss matches the
    run's per-sample log."""
    from train.recipes import replay_run, run

    cfg = make_cfg(output_dir=str(tmp_path / "packed"), max_steps=6, global_batch_size=4, micro_batch_size=1,
                   data={"packing": True, "pack_length": 1024}, checkpoint={"save_every": 2, "keep_last": 5},
                   log={"per_sample": "every_step"})
    run(cfg)
    logged = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "packed")}
    for step, rerun in ((5, 0), (4, 1), (2, 1)):  # 2: from the run's start
        result = replay_run(cfg, step)
        assert (result.loss, result.rerun) == (logged[step], rerun)
        rows = {r["id"]: r for r in _per_sample(tmp_path / "packed") if r["step"] == step}
        assert {r.id: r.tokens for r in result.records} == {i: r["supervised_tokens"] for i, r in rows.items()}
        assert all(r.loss_sum == rows[r.id]["loss_sum"] for r in result.records)


@pytest.mark.slow
def test_replay_with_lora_dropout_from_the_start_and_from_a_checkpoint(make_cfg, tmp_path) -> None:
    """Dropout draws from the RNG every step: replaying step 2 from the run's start (step 1 re-run) is exact only if
    nothing else drew from it between the steps (the efficiency log's matmul probe once did); step 3 from step 2's
    checkpoint gets the RNG state saved there."""
    from train.recipes import replay_run, run

    cfg = make_cfg(output_dir=str(tmp_path / "lora"), max_steps=3, checkpoint={"save_every": 2},
                   trainable={"llm_mode": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.3}})
    run(cfg)
    logged = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "lora")}
    for step, start in ((2, None), (3, "step-00000002")):
        result = replay_run(cfg, step)
        assert result.loss == logged[step] and (result.start.name if result.start else None) == start
