"""Shared tiny synthetic worlds (generated once per test session)."""
from __future__ import annotations

from pathlib import Path

import pytest

from synthetic.generate import SynthConfig, generate_world


def tiny_config(out: Path, seed: int = 0, num_workers: int = 1) -> SynthConfig:
    return SynthConfig(out=str(out), seed=seed, num_train=60, num_test=30, num_workers=num_workers,
                       pope_images=20, scienceqa_images=10, scienceqa_text=3, text_eval=20,
                       text_chats=20, corpus_scenes=200, vocab_size=600)


@pytest.fixture(scope="session")
def make_config():
    """The tiny world's config builder, for tests that generate worlds of their own."""
    return tiny_config


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(tiny_config(out, seed=0, num_workers=2))
    return out
