"""Shared fixtures for instruct_data tests: two tiny tokenizers (byte-level BPE, SentencePiece-style Unigram) trained here."""
from __future__ import annotations

import string

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

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
