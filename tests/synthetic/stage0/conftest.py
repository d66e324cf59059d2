"""A tiny synthetic world shared by the stage-0 tests, plus tiny backbone configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from synthetic.generate import SynthConfig, generate_world
from synthetic.stage0.config import LLMPretrainConfig, ViTPretrainConfig


@pytest.fixture(scope="session")
def stage0_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world for the stage-0 backbones: 96 train / 32 test scenes of 32 pixels, 40 text chats, 300 corpus scenes."""
    out = tmp_path_factory.mktemp("stage0") / "w"
    generate_world(SynthConfig(out=str(out), seed=0, num_train=96, num_test=32, image_size=32, num_workers=1,
                               pope_images=4, scienceqa_images=2, scienceqa_text=1, text_eval=4,
                               text_chats=40, corpus_scenes=300, vocab_size=600))
    return out


@pytest.fixture
def tiny_llm() -> LLMPretrainConfig:
    return LLMPretrainConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64,
                             batch_tokens=1024, lesson_steps=1, lookup_batch=16, steps=40, lr=1e-2, warmup_steps=4,
                             gate_scenes=5)


@pytest.fixture
def tiny_vit() -> ViTPretrainConfig:
    return ViTPretrainConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=8,
                             text_hidden_size=32, text_layers=1, projection_dim=32, batch_size=32, steps=100,
                             lr=3e-3, warmup_steps=4)
