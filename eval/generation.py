"""Batched greedy generation for eval: prompts rendered by the checkpoint's template, LEFT padded."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from conversation.errors import ImageLoadError
from conversation.records import is_valid_unicode
from eval.items import EvalItem, Failed
from vision_encoders.preprocess import to_rgb
from vlm.batch import Batch


class GenerateFn(Protocol):
    """Anything that answers a batch of questions (the real model, or a stand-in in tests); an item it cannot
    answer (its image cannot be read) gets a `Failed` with the reason instead of a text."""

    def __call__(self, items: list[EvalItem]) -> list[str | Failed]: ...


def open_image(item: EvalItem, blank: bool = False,
               check_size: Callable[[int, int], str | None] | None = None) -> Image.Image:
    """The item's image as RGB; with `blank`, a black image of the same size (the 'blind' baseline).

    ImageLoadError (naming the file and why) for a missing, empty, corrupt, bomb-sized or, by `check_size`,
    too extreme image; any mode (CMYK, 16-bit, palette, alpha) converts as in training."""
    from conversation.images import load_image  # bomb-checked decoding, the format sniffed from the content

    image = item.image if isinstance(item.image, Image.Image) else load_image(Path(str(item.image)),
                                                                              check_size=check_size)
    image = to_rgb(image)
    return Image.new("RGB", image.size, (0, 0, 0)) if blank else image


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, padding on the left so every prompt ends at the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def cut_at_stop(tokens: list[int], stops: set[int], pad_id: int) -> list[int]:
    """Tokens before the first stop token (or the padding generate adds after a row finished)."""
    out = []
    for t in tokens:
        if t in stops or t == pad_id:
            break
        out.append(t)
    return out


def _stop_ids(model: Any) -> set[int]:
    from conversation.tokenize import stop_token_ids

    return set(stop_token_ids(model.config.template, model.tokenizer))


class ModelGenerator:
    """Answers batches with a `VisionLanguageModel` (ours, or a HF Llava directory loaded as one)."""

    def __init__(self, model: Any, max_new_tokens: int = 16, blank_images: bool = False) -> None:
        from conversation.tokenize import encode_prompt

        self.model = model
        self.max_new_tokens = max_new_tokens
        self.blank_images = blank_images
        self._encode_prompt = encode_prompt
        self.stops = _stop_ids(model)

    def encode(self, item: EvalItem, image_size: tuple[int, int] | None = None) -> list[int]:
        """The item's prompt rendered by the checkpoint's template, ending with the assistant prefix."""
        from conversation.records import Message

        cfg = self.model.config
        content = (cfg.image_token + "\n" if item.image is not None else "") + item.prompt
        counts: int | list[int] = cfg.num_image_tokens
        if getattr(cfg.vision, "anyres", False) and item.image is not None:
            from vlm.anyres_features import image_token_counter

            if image_size is None:
                raise ValueError(f"item {item.question_id!r}: an anyres model needs the image size to count its tokens")
            counts = [image_token_counter(self.model)(image_size)]
        return self._encode_prompt([Message(role="user", content=content)], cfg.template, self.model.tokenizer,
                                   image_token_id=cfg.image_token_id, num_image_tokens=counts)

    def pixels(self, item: EvalItem) -> torch.Tensor | None:
        """The item's image as model pixels (None for a text-only item); ImageLoadError / ValueError if unusable."""
        processed = self.processed(item)
        return None if processed is None else processed[0]

    def processed(self, item: EvalItem) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """(pixels, (height, width)) of the item's image; anyres pixels are its tiles [n, 3, S, S]."""
        if item.image is None:
            return None
        processor = self.model.image_processor
        image = open_image(item, self.blank_images, getattr(processor, "size_problem", None))
        if getattr(processor, "anyres", False):
            return processor.process(image)
        return processor(image), (image.height, image.width)

    def __call__(self, items: list[EvalItem]) -> list[str | Failed]:
        """Answers in order; an item whose image or prompt is unusable gets a `Failed`, the others are answered."""
        answers: list[str | Failed | None] = [None] * len(items)
        ready: list[tuple[int, tuple[torch.Tensor, tuple[int, int]] | None]] = []
        for i, item in enumerate(items):
            try:
                if not is_valid_unicode(item.prompt):
                    raise ValueError("the question is not valid Unicode (a lone surrogate)")
                ready.append((i, self.processed(item)))
            except ImageLoadError as err:
                answers[i] = Failed(f"image {err.path}: {err.reason}")
            except ValueError as err:  # the image processor's last guard, an unusable prompt
                answers[i] = Failed(str(err))
        if ready:
            texts = self._generate([items[i] for i, _ in ready], [p for _, p in ready if p is not None])
            for (i, _), text in zip(ready, texts, strict=True):
                answers[i] = text
        return answers  # type: ignore[return-value]

    @torch.no_grad()
    def _generate(self, items: list[EvalItem], images: list[tuple[torch.Tensor, tuple[int, int]]]) -> list[str]:
        cfg = self.model.config
        anyres = bool(getattr(cfg.vision, "anyres", False))  # tiles per image, token counts from each size
        sizes = iter([size for _, size in images])
        ids, mask = left_pad([self.encode(it, next(sizes) if anyres and it.image is not None else None)
                              for it in items], cfg.pad_token_id)
        device = next(self.model.parameters()).device
        pixels = (torch.cat if anyres else torch.stack)([p for p, _ in images]) if images else None
        prompts = Batch(ids, mask, image_counts=torch.tensor([int(it.image is not None) for it in items]),
                        pixel_values=pixels.to(self.model.dtype) if pixels is not None else None,
                        image_sizes=[size for _, size in images] if anyres else None)
        new = self.model.generate(prompts.to(device), max_new_tokens=self.max_new_tokens, do_sample=False,
                                  eos_token_id=sorted(self.stops) or None)
        tok = self.model.tokenizer
        return [tok.decode(cut_at_stop(row.tolist(), self.stops, cfg.pad_token_id), skip_special_tokens=True).strip()
                for row in new]


def load_model(model_dir: str | Path, device: str | None = None, hf_template: str = "vicuna_v1",
               torch_dtype: str | None = None) -> Any:
    """Our checkpoint, or a HF Llava directory imported (weights mapped by name, strict) into a temp checkpoint."""
    from vlm.loading import load_model_dir

    return load_model_dir(model_dir, device=device, torch_dtype=torch_dtype, hf_template=hf_template)


def load_generator(model_dir: str, max_new_tokens: int, blank_images: bool = False, device: str | None = None,
                   hf_template: str = "vicuna_v1", torch_dtype: str | None = None) -> ModelGenerator:
    """A batched generator over our checkpoint or a HF Llava directory."""
    from vlm.dtypes import inference_dtype

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = inference_dtype(torch_dtype, device)  # bf16 on a GPU unless asked otherwise
    return ModelGenerator(load_model(model_dir, device, hf_template, dtype), max_new_tokens, blank_images)


class LazyGenerator:
    """Loads the model on the first batch, so a call with nothing left to answer (merge, score) loads none."""

    def __init__(self, factory: Callable[[], GenerateFn]) -> None:
        self._factory = factory
        self._generate: GenerateFn | None = None

    def __call__(self, items: list[EvalItem]) -> list[str | Failed]:
        if self._generate is None:
            self._generate = self._factory()
        return self._generate(items)
