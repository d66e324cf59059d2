"""Shared fixtures for the vlm tests: tiny LLMs and encoders written once per session, models built from them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from vision_encoders import testing as vision_testing
from vision_encoders.config import VisionEncoderConfig
from vlm.model import VisionLanguageModel
from vlm.testing import make_tiny_llm


class Tiny:
    """Caches tiny checkpoints on disk; every `vlm()` call builds a fresh model through `build()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._llms: dict[str, str] = {}
        self._vision: dict[str, str] = {}

    def llm(self, arch: str = "llama") -> str:
        if arch not in self._llms:
            base, _, tied = arch.partition("_")  # "qwen2_tied": qwen2 with tied embeddings
            self._llms[arch] = make_tiny_llm(self.root / f"llm_{arch}", arch=base,  # type: ignore[arg-type]
                                             tie_word_embeddings=True if tied == "tied" else None)
        return self._llms[arch]

    def vision(self, kind: str = "clip") -> str:
        if kind not in self._vision:
            maker = getattr(vision_testing, f"make_tiny_{kind}")
            self._vision[kind] = maker(self.root / f"vision_{kind}")
        return self._vision[kind]

    def vlm(self, arch: str = "llama", encoder: str = "clip", projector: str = "mlp2x_gelu", seed: int = 0,
            **vision_options: Any) -> VisionLanguageModel:
        torch.manual_seed(seed)
        vision = VisionEncoderConfig(spec=self.vision(encoder), **vision_options)
        return VisionLanguageModel.build(vision, projector, self.llm(arch), "vicuna_v1").eval()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp("tiny_vlm"))
