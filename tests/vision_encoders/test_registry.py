"""Spec parsing, backend choice by exact prefix, and `./` paths resolved against the checkpoint dir."""
from __future__ import annotations

from pathlib import Path

import pytest

from vision_encoders.config import VisionEncoderConfig
from vision_encoders.registry import BACKENDS, load_vision_encoder, parse_spec, resolve_path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:openai/clip-vit-large-patch14-336", ("hf", "openai/clip-vit-large-patch14-336", None)),
        ("hf:./vision", ("hf", "./vision", None)),
        ("hf:/tmp/a@b", ("hf", "/tmp/a@b", None)),  # hf ids/paths are taken whole
        ("timm:vit_base_patch16_224", ("timm", "vit_base_patch16_224", None)),
        ("timm:vit_tiny_patch16_224@./vision/model.safetensors",
         ("timm", "vit_tiny_patch16_224", "./vision/model.safetensors")),
        ("open_clip:ViT-L-14-336@/w/x.safetensors", ("open_clip", "ViT-L-14-336", "/w/x.safetensors")),
        ("open_clip:ViT-B-32@openai", ("open_clip", "ViT-B-32", "openai")),
    ],
)
def test_parse_spec(spec: str, expected: tuple[str, str, str | None]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["clip:foo", "HF:foo", "hf_hub:foo", "timmy:vit", "open-clip:ViT-B-32", "novendor"])
def test_unknown_backend_lists_known(spec: str) -> None:
    with pytest.raises(ValueError, match=r"unknown backend .*known: \['hf', 'open_clip', 'timm'\]"):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["hf:", "timm:@x.safetensors", "timm:vit@"])
def test_malformed_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="vision encoder spec"):
        parse_spec(spec)


def test_backends_are_exact_names() -> None:
    assert sorted(BACKENDS) == ["hf", "open_clip", "timm"]


def test_resolve_path(tmp_path: Path) -> None:
    assert resolve_path("./vision/model.safetensors", tmp_path) == str(tmp_path / "vision/model.safetensors")
    assert resolve_path("/abs/x", tmp_path) == "/abs/x"
    assert resolve_path("openai", tmp_path) == "openai"
    assert resolve_path(None, tmp_path) is None
    with pytest.raises(ValueError, match="needs base_dir"):
        resolve_path("./vision", None)


def test_load_relative_hf_spec(tiny_clip_spec: str) -> None:
    path = Path(tiny_clip_spec.removeprefix("hf:"))
    encoder = load_vision_encoder(VisionEncoderConfig(f"hf:./{path.name}"), base_dir=path.parent)
    assert encoder.num_tokens == 16


def test_load_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend 'foo'"):
        load_vision_encoder(VisionEncoderConfig("foo:bar"))
