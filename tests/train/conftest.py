"""Fixtures for the training tests: a tiny saved VLM, a tiny LLaVA-format dataset with real PNGs, a config factory."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from train.config import TrainConfig, config_from_dict, upgrade

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def _write_images(root: Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for name, rgb in COLOURS.items():
        image = Image.new("RGB", (40, 32), rgb)
        image.paste((255, 255, 255), (4, 4, 14, 14))
        image.save(root / f"{name}.png")
        names.append(f"{name}.png")
    return names


def _records(images: list[str], n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        image = images[i % len(images)]
        colour = image.split(".")[0]
        if i % 5 == 4:  # text-only records mixed in
            out.append({"id": f"t{i}", "conversations": [
                {"from": "human", "value": f"Count to {i % 7}."},
                {"from": "gpt", "value": " ".join(str(k) for k in range(i % 7 + 1))}]})
            continue
        out.append({"id": f"r{i}", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"},
            {"from": "gpt", "value": f"A {colour} picture with a white square."}]})
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved tiny VLM (`base`), images and `data.json` (24 records), built once per session."""
    from vlm.testing import make_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_world")
    model = make_tiny_vlm(root / "parts", arch="llama", encoder="clip", template="vicuna_v1")
    model.save(root / "base")
    images = _write_images(root / "images")
    (root / "data.json").write_text(json.dumps(_records(images, 24)))
    return {"root": root, "base": root / "base", "images": root / "images", "data": root / "data.json"}


@pytest.fixture()
def make_cfg(tiny_world: dict[str, Path], tmp_path: Path) -> Callable[..., TrainConfig]:
    """A TrainConfig for the tiny world; keyword overrides by section or by flat key of before (`micro_batch_size=2`,
    `data={"strict": True}`: moved to their sections without a warning), dicts merged into the defaults."""

    def make(**over: Any) -> TrainConfig:
        data: dict[str, Any] = {
            "recipe": "instruct",
            "model": {"init_from": str(tiny_world["base"]), "template": "vicuna_v1"},
            "data": {"data_path": [str(tiny_world["data"])], "image_folder": str(tiny_world["images"]),
                     "max_length": 256},
            "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
            "schedule": {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 3, "seed": 0},
            "engine": {"precision": "fp32"},
            "checkpoint": {"output_dir": str(tmp_path / "run"), "resume": "none"},
            "feature_cache": {"enabled": False},
            "log": {"tensorboard": False, "progress_bar": False},
        }
        _merge(data, upgrade(copy.deepcopy(over), warn=False))
        return config_from_dict(data)

    return make


def _merge(into: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def preference_records(n: int) -> list[dict[str, Any]]:
    """n preference pairs over the tiny world's images: the image's colour chosen, the next colour rejected."""
    colours = list(COLOURS)
    out = []
    for i in range(n):
        right, wrong = colours[i % len(colours)], colours[(i + 1) % len(colours)]
        out.append({"id": f"p{i}", "image": f"{right}.png",
                    "conversations": [{"from": "human", "value": "<image>\nWhat colour is the picture?"}],
                    "chosen": f"It is {right} with a white square.", "rejected": f"It is {wrong} with a white square."})
    return out


@pytest.fixture(scope="session")
def prefer_data(tiny_world: dict[str, Path]) -> Path:
    """`prefer.json`: 16 preference pairs over the tiny world's images (beside its `data.json`)."""
    path = tiny_world["root"] / "prefer.json"
    path.write_text(json.dumps(preference_records(16)))
    return path


@pytest.fixture()
def make_prefer_cfg(make_cfg: Callable[..., TrainConfig], prefer_data: Path) -> Callable[..., TrainConfig]:
    """`make_cfg` for recipe `prefer` over `prefer_data` (the same keyword overrides)."""

    def make(**over: Any) -> TrainConfig:
        data = {"data_path": [str(prefer_data)], **over.pop("data", {})}
        return make_cfg(recipe="prefer", data=data, **over)

    return make
