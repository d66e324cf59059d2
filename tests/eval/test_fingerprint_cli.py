"""`--strict-fingerprint` on chat, eval run and export-hf: a checkpoint whose preprocessing drifted stops with exit 2
and the named drift; without it the drift is a warning."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.cli import main

pytestmark = pytest.mark.slow  # each command loads the tiny model


@pytest.fixture()
def drifted(tiny_vlm_dir: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_vlm_dir, ckpt)
    processor_file = ckpt / "image_processor.json"
    processor_file.write_text(json.dumps({**json.loads(processor_file.read_text()), "resample": "nearest"}))
    return ckpt


def test_strict_commands_stop_on_drift(drifted: Path, vqav2_root: Path, tmp_path: Path, capsys) -> None:
    commands = {
        "chat": ["chat", "--model", str(drifted), "--question", "hi", "--max-new-tokens", "2"],
        "eval": ["eval", "run", "--model", str(drifted), "--benchmark", "vqav2", "--data-root", str(vqav2_root),
                 "--out", str(tmp_path / "eval"), "--max-new-tokens", "2", "--no-progress"],
        "export": ["export-hf", str(drifted), "--out", str(tmp_path / "hf")],
    }
    for name, argv in commands.items():
        assert main(argv + ["--strict-fingerprint"]) == 2, name
        err = capsys.readouterr().err
        assert "image processor: pixels of probe rgb_400x20 changed" in err, (name, err[-500:])
    assert not (tmp_path / "hf").exists() and not (tmp_path / "eval" / "scores.json").exists()

    assert main(commands["export"]) == 0  # without strictness: a warning, and the export is written
    assert "warning: preprocessing fingerprint drift" in capsys.readouterr().err
    assert (tmp_path / "hf" / "preprocessing_fingerprint.json").is_file()
