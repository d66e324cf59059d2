"""Suite-wide settings (offline hubs, bounded threads) and the fixtures several packages' tests share:
two tiny tokenizers trained here, and tiny LLMs / encoders / VLMs saved once per session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import string  # noqa: E402 (the environment above must be set before transformers loads)
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vision_encoders import testing as vision_testing
from vision_encoders.config import VisionEncoderConfig
from vlm.model import VisionLanguageModel
from vlm.testing import make_tiny_llm, make_tiny_vlm

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip, with the reason, on a machine where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cuda_hidden_unless_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test not marked `gpu` sees no CUDA, so the suite runs the same (CPU, fp32, gloo) on a GPU machine;
    subprocesses get CUDA_VISIBLE_DEVICES="" in their environment for the same reason."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


WORDS = (
    "the a cat dog red blue green square circle triangle image photo what is color of in on left right "
    "how many there are two three one yes no describe picture shows small large bus white answer question "
    "single word phrase chat between curious user artificial intelligence assistant gives helpful detailed "
    "polite answers to user's questions USER ASSISTANT INST SYS You are language and vision able understand "
    "visual content that provides assist with variety tasks using natural system"
).split()
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def _corpus() -> list[str]:
    lines = []
    for i in range(len(WORDS)):
        chunk = WORDS[i:] + WORDS[:i]
        lines.append(" ".join(chunk[:12]) + "?\n" + " ".join(chunk[12:20]) + ".")
    lines.append("[INST] <<SYS>> <</SYS>> : , . ? ! ' \" 0 1 2 3 4 5 6 7 8 9 ( ) - " + " ".join(string.ascii_letters))
    return lines * 3


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>", *CHAT_SPECIALS]})
    return fast


def build_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    return _wrap(tok)


def build_unigram() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(_corpus())) - {" "}) + ["\n"]
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>", initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    return _wrap(tok)


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return build_bpe()


@pytest.fixture(scope="session")
def unigram_tokenizer() -> PreTrainedTokenizerFast:
    return build_unigram()


@pytest.fixture(scope="session", params=["bpe", "unigram"])
def tokenizer(request, bpe_tokenizer, unigram_tokenizer) -> PreTrainedTokenizerFast:
    return bpe_tokenizer if request.param == "bpe" else unigram_tokenizer


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


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vlm.testing.make_tiny_vlm()` (llama, clip, vicuna_v1) saved once per session in a directory named `ckpt`,
    for the commands that take `--model DIR`; tests read it, none writes into it."""
    root = tmp_path_factory.mktemp("tiny_vlm_dir")
    make_tiny_vlm(root / "parts").save(root / "ckpt")
    return root / "ckpt"
