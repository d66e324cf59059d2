"""Shared fixtures: tiny encoders of every backend, written once per session in their real formats."""
from __future__ import annotations

import pytest
import torch

from vision_encoders import testing


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return testing.make_tiny_clip(tmp_path_factory.mktemp("clip") / "vision")


@pytest.fixture(scope="session")
def tiny_full_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return testing.make_tiny_clip(tmp_path_factory.mktemp("full_clip") / "clip", full=True)


@pytest.fixture(scope="session")
def tiny_siglip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return testing.make_tiny_siglip(tmp_path_factory.mktemp("siglip") / "vision")


@pytest.fixture(scope="session")
def tiny_timm_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return testing.make_tiny_timm(tmp_path_factory.mktemp("timm") / "vision")


@pytest.fixture(scope="session")
def tiny_open_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return testing.make_tiny_open_clip(tmp_path_factory.mktemp("open_clip") / "vision")


@pytest.fixture
def pixels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, testing.TINY_IMAGE, testing.TINY_IMAGE, generator=generator)

