"""Tiny LLMs and tiny VLMs for tests: built from config objects, saved, and loaded back through from_pretrained."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers import Qwen2Config, Qwen2ForCausalLM

from vision_encoders.config import VisionEncoderConfig

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel

Arch = Literal["llama", "qwen2", "gpt2"]

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A red circle on a blue background.",
    "USER: How many squares are there? ASSISTANT: There are three green squares.",
    "Describe the picture. The picture shows a small yellow triangle next to a large purple star.",
    "Answer the question using a single word or phrase. Yes. No. Two. Left. Right. Top. Bottom.",
    "0 1 2 3 4 5 6 7 8 9 ten eleven twelve. shapes colours sizes rows columns scene object",
]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def make_tiny_tokenizer(directory: str | Path, vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences: `<s>`/`</s>`/`<unk>`, no pad token (build adds one)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


def make_tiny_llm(directory: str | Path, arch: Arch = "llama", hidden_size: int = 32, seed: int = 0,
                  tie_word_embeddings: bool | None = None) -> str:
    """Save a 2-layer causal LM of `arch` plus its tokenizer to `directory`; returns the path as a string.

    Weights use a large init range so that logits are decisive (greedy ties would make comparisons flaky).
    Embeddings are untied for llama/qwen2 and tied for gpt2 unless `tie_word_embeddings` says otherwise.
    """
    directory = Path(directory)
    tokenizer = make_tiny_tokenizer(directory)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  initializer_range=0.2)
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=bool(tie_word_embeddings), **common)
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = Qwen2Config(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=bool(tie_word_embeddings), **common)
        model = Qwen2ForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=2, n_head=4, n_positions=512,
                            tie_word_embeddings=tie_word_embeddings is not False, **common)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unknown tiny LLM arch {arch!r}; known: llama, qwen2, gpt2")
    model.save_pretrained(directory, safe_serialization=True)
    return str(directory)


def make_tiny_vlm(
    tmp: str | Path,
    *,
    arch: Arch = "llama",
    encoder: Literal["clip", "siglip", "timm", "open_clip"] = "clip",
    projector: str = "mlp2x_gelu",
    template: str = "vicuna_v1",
    select_layer: int = -2,
    select_feature: Literal["patch", "cls_patch"] = "patch",
    image_aspect_ratio: Literal["pad", "crop", "resize", "anyres"] = "pad",
    seed: int = 0,
    image_grid_pinpoints: list[list[int]] | str | None = None,
    anyres_max_tiles: int | None = None,
) -> "VisionLanguageModel":
    """A tiny encoder (32x32 images, 8x8 patches, width 32) + projector + tiny `arch` LLM, built as a user would."""
    from vision_encoders import testing as vision_testing
    from vlm.model import VisionLanguageModel

    tmp = Path(tmp)
    makers = {
        "clip": vision_testing.make_tiny_clip,
        "siglip": vision_testing.make_tiny_siglip,
        "timm": vision_testing.make_tiny_timm,
        "open_clip": vision_testing.make_tiny_open_clip,
    }
    if encoder not in makers:
        raise ValueError(f"unknown tiny encoder {encoder!r}; known: {sorted(makers)}")
    spec = makers[encoder](tmp / f"vision_{encoder}", seed=seed)
    llm_path = make_tiny_llm(tmp / f"llm_{arch}", arch=arch, seed=seed)
    vision = VisionEncoderConfig(spec=spec, select_layer=select_layer, select_feature=select_feature,
                                 image_aspect_ratio=image_aspect_ratio, image_grid_pinpoints=image_grid_pinpoints,
                                 anyres_max_tiles=anyres_max_tiles)
    torch.manual_seed(seed)
    return VisionLanguageModel.build(vision, projector, llm_path, template)


def sample_ids(model: "VisionLanguageModel", num_images: int, num_text: int = 5, seed: int = 0) -> torch.Tensor:
    """A 1-D prompt: bos, then per image K image tokens followed by text, then `num_text` more text tokens."""
    gen = torch.Generator().manual_seed(seed)
    vocab_low, vocab_high = 3, model.config.added_token_ids[0] if model.config.added_token_ids else 100
    pieces = [torch.tensor([model.tokenizer.bos_token_id or 1])]
    for _ in range(num_images):
        pieces.append(torch.full((model.config.num_image_tokens,), model.config.image_token_id))
        pieces.append(torch.randint(vocab_low, vocab_high, (2,), generator=gen))
    pieces.append(torch.randint(vocab_low, vocab_high, (num_text,), generator=gen))
    return torch.cat(pieces)


def pad_batch(sequences: list[torch.Tensor], pad_id: int, side: Literal["left", "right"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into (ids, attention_mask), padding on `side`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = seq
        mask[row, span] = 1
    return ids, mask
