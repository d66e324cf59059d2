"""`vlm pretrain-backbones` through the console dispatcher: writes llm/ and vit/, then reuses them."""
import json
from pathlib import Path

import pytest
import torch

from app.cli import main


def test_cli_trains_then_reuses_the_cache(stage0_world: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "backbones"
    args = ["pretrain-backbones", "--world", str(stage0_world), "--out", str(out), "--llm-steps", "2", "--vit-steps", "2",
            "--llm-lesson-steps", "1", "--llm-batch-tokens", "512", "--vit-batch-size", "4", "--vit-patch-size", "8"]
    assert main(args) == 0
    assert (out / "llm" / "model.safetensors").is_file() and (out / "vit" / "preprocessor_config.json").is_file()
    first = capsys.readouterr().out
    assert '"cached": false' in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert '"cached": true' in second and '"cached": false' not in second
    cache = json.loads((out / "vit" / "stage0.json").read_text())
    assert cache["config"]["steps"] == 2


def test_missing_world_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a synthetic world"):
        main(["pretrain-backbones", "--world", str(tmp_path), "--only", "llm", "--llm-steps", "1"])
