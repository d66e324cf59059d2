"""Tests for train.run_logger: JSONL records, truncation before resume, the loss-curve PNG, the progress bar."""
from __future__ import annotations

import io
import json
import sys
import time

from PIL import Image

from train.run_logger import LOSS_PNG, RunLogger, plot_loss_curve, read_metrics, truncate_metrics


def test_jsonl_truncate_and_plot(tmp_path) -> None:
    logger = RunLogger(tmp_path, total_steps=5, tensorboard=True, progress_bar=True)
    for step in range(1, 6):
        logger.log_step(step, {"loss": 5.0 / step, "lr": 1e-3, "tokens_per_s": 100.0})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "lo')  # a line cut by kill -9
    truncate_metrics(tmp_path, 3)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["loss"] == 2.5
    png = plot_loss_curve(tmp_path)
    assert png == tmp_path / LOSS_PNG and Image.open(png).size == (700, 400)
    assert list((tmp_path / "tensorboard").iterdir())


def test_disabled_logger_writes_nothing(tmp_path) -> None:
    logger = RunLogger(tmp_path / "x", total_steps=2, enabled=False)
    logger.log_step(1, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "x").exists()
    assert plot_loss_curve(tmp_path / "x") is None
    assert json.dumps(read_metrics(tmp_path / "x")) == "[]"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_refreshes_rarely_off_a_terminal(tmp_path, monkeypatch) -> None:
    """Under nohup / a job scheduler every refresh is a new log line: off a TTY refresh at most every 10 s."""
    for tty in (False, True):
        stream = _Stream(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        logger = RunLogger(tmp_path / str(tty), total_steps=200, tensorboard=False, progress_bar=True)
        for step in range(1, 201):
            logger.log_step(step, {"loss": 1.0, "lr": 1e-3})
            time.sleep(0.001)
        assert logger._bar is not None
        interval = logger._bar.mininterval
        logger.close()
        refreshes = stream.getvalue().count("\r")
        if tty:
            assert interval < 1
        else:
            assert interval >= 10 and refreshes <= 3, (interval, refreshes)  # first draw, close
