"""Tests for VLMConfig: JSON round trip and strict key checking."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vision_encoders.config import VisionEncoderConfig
from vlm.config import VLMConfig


def _config() -> VLMConfig:
    return VLMConfig(vision=VisionEncoderConfig(spec="hf:./vision", select_layer=-1, select_feature="cls_patch"),
                     projector="mlp2x_gelu", llm="./llm", template="vicuna_v1", image_token_id=7, pad_token_id=8,
                     num_image_tokens=17, vision_num_tokens=17, added_token_ids=[7, 8])


def test_round_trip(tmp_path: Path) -> None:
    config = _config()
    config.save(tmp_path)
    loaded = VLMConfig.load(tmp_path)
    assert loaded == config
    assert isinstance(loaded.vision, VisionEncoderConfig)


def test_unknown_and_missing_keys_are_errors(tmp_path: Path) -> None:
    data = _config().to_dict()
    data["projecter"] = "linear"
    (tmp_path / "vlm_config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"vlm_config.json: unknown VLM config keys \['projecter'\]"):
        VLMConfig.load(tmp_path)
    data = _config().to_dict()
    data["vision"]["layer"] = -2
    with pytest.raises(ValueError, match=r"unknown vision encoder config keys \['layer'\]"):
        VLMConfig.from_dict(data)
    data = _config().to_dict()
    del data["llm"]
    with pytest.raises(ValueError, match=r"lacks required keys \['llm'\]"):
        VLMConfig.from_dict(data)
    (tmp_path / "vlm_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        VLMConfig.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no vlm_config.json"):
        VLMConfig.load(tmp_path / "nowhere")


def test_the_config_file_name_is_spelled_once() -> None:
    """Every reader and writer of `vlm_config.json` names it through `vlm.config.CONFIG_NAME`."""
    from pathlib import Path

    from vlm.config import CONFIG_NAME

    repo = Path(__file__).resolve().parents[2]
    packages = [p.parent for p in repo.glob("*/__init__.py")]
    spelled = [str(f.relative_to(repo)) for pkg in packages for f in pkg.rglob("*.py")
               if CONFIG_NAME in f.read_text(encoding="utf-8")]
    assert spelled == ["vlm/config.py"]
