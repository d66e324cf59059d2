"""The run's one DataLoader (persistent workers across epochs, exact resume), loader wait, warnings, copies."""
from __future__ import annotations

import shutil
import time

import torch

from train.feeding import EpochBatches, TimedIterator, WaitWarner, enable_tf32
from train.run_logger import read_metrics
from train.recipes import run


def test_epoch_batches_follow_epoch_and_skip() -> None:
    sampler = EpochBatches(lambda epoch: [[epoch, i] for i in range(4)])
    assert list(sampler) == [[0, 0], [0, 1], [0, 2], [0, 3]] and len(sampler) == 4
    sampler.set(2, 3)
    assert list(sampler) == [[2, 3]] and len(sampler) == 1


def test_timed_iterator_adds_up_the_waits() -> None:
    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    it = TimedIterator(slow())
    assert [next(it), next(it)] == [0, 1]
    first = it.take_wait()
    assert 0.09 < first < 1.0 and it.take_wait() == 0.0
    assert list(it) == [2] and it.take_wait() > 0.04


def test_wait_warning_once_then_rate_limited() -> None:
    warner = WaitWarner(every_s=3600)
    assert warner.check(1, wait_s=0.05, step_s=1.0, num_workers=0) is None  # 5 %: fine
    first = warner.check(2, wait_s=0.5, step_s=1.0, num_workers=0)
    assert first is not None and "step 2" in first and "33%" in first and "num_workers=0" in first
    assert warner.check(3, wait_s=0.5, step_s=1.0, num_workers=0) is None  # rate-limited
    warner.last -= 3601
    again = warner.check(4, wait_s=0.5, step_s=1.0, num_workers=0)
    assert again is not None and "2 such step(s)" in again


def test_tf32_is_for_gpus_only() -> None:
    assert enable_tf32("fp32", torch.device("cpu")) is False


def test_persistent_workers_resume_exactly_across_epochs(make_cfg, tmp_path) -> None:
    """24 records at batch 4: 6 steps an epoch; 1.5 epochs with 2 persistent workers, resumed mid-epoch 0 and
    in epoch 1, log the losses of the uninterrupted run."""
    common = dict(max_steps=-1, epochs=1.5, save_every=4, keep_last=3, data={"num_workers": 2})
    full = run(make_cfg(output_dir=str(tmp_path / "a"), **common))
    assert full.steps == 9
    for step in (4, 8):
        shutil.copytree(tmp_path / "a" / "checkpoints" / f"step-{step:08d}", tmp_path / f"mid{step}")
        again = run(make_cfg(output_dir=str(tmp_path / f"b{step}"), resume=str(tmp_path / f"mid{step}"), **common))
        assert again.losses == full.losses[step:]


def test_efficiency_metrics_and_summary_line(make_cfg, tmp_path, capsys) -> None:
    run(make_cfg(output_dir=str(tmp_path / "a"), max_steps=2))
    records = read_metrics(tmp_path / "a")
    assert len(records) == 2
    for record in records:
        assert 0 < record["mfu"] < 1 and record["model_tflops"] > 0
        assert 0 <= record["padding_ratio"] < 1 and record["loader_wait_s"] >= 0 and record["peak_mem_mb"] > 0
    err = capsys.readouterr().err
    assert "efficiency over 2 step(s)" in err and "MFU" in err and "padding" in err
