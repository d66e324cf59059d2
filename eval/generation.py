"""Batched greedy generation for eval: prompts rendered by the checkpoint's template, LEFT padded."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from conversation.errors import ImageLoadError
from conversation.records import Message, is_valid_unicode
from conversation.templates import stop_token_ids
from eval.items import EvalItem, Failed
from vision_encoders.preprocess import ImageProcessor, to_rgb
from vlm import inputs
from vlm.inputs import Pixels, load_pixels, prompt_batch, prompt_ids


class GenerateFn(Protocol):
    """Anything that answers a batch of questions (the real model, or a stand-in in tests); an item it cannot
    answer (its image cannot be read) gets a `Failed` with the reason instead of a text."""

    def __call__(self, items: list[EvalItem]) -> list[str | Failed]: ...


def open_image(item: EvalItem, processor: ImageProcessor, blank: bool = False) -> Image.Image:
    """The item's image as RGB; with `blank`, a black image of the same size (the 'blind' baseline).

    ImageLoadError (naming the file and why) for a missing, empty, corrupt, bomb-sized or, by the processor's
    size check, too extreme image; any mode (CMYK, 16-bit, palette, alpha) converts as in training."""
    source = item.image if isinstance(item.image, Image.Image) else Path(str(item.image))
    image = to_rgb(inputs.open_image(source, processor))
    return Image.new("RGB", image.size, (0, 0, 0)) if blank else image


def cut_at_stop(tokens: list[int], stops: set[int], pad_id: int) -> list[int]:
    """Tokens before the first stop token (or the padding generate adds after a row finished)."""
    out = []
    for t in tokens:
        if t in stops or t == pad_id:
            break
        out.append(t)
    return out


class ModelGenerator:
    """Answers batches with a `VisionLanguageModel` (ours, or a HF Llava directory loaded as one)."""

    def __init__(self, model: Any, max_new_tokens: int = 16, blank_images: bool = False) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.blank_images = blank_images
        self.stops = set(stop_token_ids(model.config.template, model.tokenizer))

    @property
    def preprocessing_fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the preprocessing the answers are generated under (computed at load, else here)."""
        if getattr(self.model, "preprocessing_fingerprint", None) is None:
            from vlm import fingerprint

            self.model.preprocessing_fingerprint = fingerprint.compute(self.model)
        return self.model.preprocessing_fingerprint

    def encode(self, item: EvalItem, image: Pixels | None = None) -> list[int]:
        """The item's prompt rendered by the checkpoint's template, ending with the assistant prefix."""
        if (image is None) != (item.image is None):
            raise ValueError(f"item {item.question_id!r}: the prompt needs its image's pixels (and only then)")
        content = inputs.image_prefix(self.model.config, int(image is not None)) + item.prompt
        return prompt_ids(self.model, [Message(role="user", content=content)], [image.size] if image else [])

    def processed(self, item: EvalItem) -> Pixels | None:
        """The item's image as model pixels (None for a text-only item); ImageLoadError if unusable."""
        if item.image is None:
            return None
        return load_pixels(open_image(item, self.model.image_processor, self.blank_images), self.model.image_processor)

    def __call__(self, items: list[EvalItem]) -> list[str | Failed]:
        """Answers in order; an item whose image or prompt is unusable gets a `Failed`, the others are answered."""
        answers: list[str | Failed | None] = [None] * len(items)
        ready: list[tuple[int, Pixels | None]] = []
        for i, item in enumerate(items):
            try:
                if not is_valid_unicode(item.prompt):
                    raise ValueError("the question is not valid Unicode (a lone surrogate)")
                ready.append((i, self.processed(item)))
            except ImageLoadError as err:
                answers[i] = Failed(f"image {err.path}: {err.reason}")
            except ValueError as err:  # an unusable prompt
                answers[i] = Failed(str(err))
        if ready:
            texts = self._generate([items[i] for i, _ in ready], [image for _, image in ready])
            for (i, _), text in zip(ready, texts, strict=True):
                answers[i] = text
        return answers  # type: ignore[return-value]

    @torch.no_grad()
    def _generate(self, items: list[EvalItem], images: list[Pixels | None]) -> list[str]:
        rows = [self.encode(item, image) for item, image in zip(items, images, strict=True)]
        prompts = prompt_batch(self.model, rows, [[image] if image is not None else [] for image in images])
        device = next(self.model.parameters()).device
        new = self.model.generate(prompts.to(device), max_new_tokens=self.max_new_tokens, do_sample=False,
                                  eos_token_id=sorted(self.stops) or None)
        pad_id = self.model.config.pad_token_id
        return [self.model.tokenizer.decode(cut_at_stop(row.tolist(), self.stops, pad_id), skip_special_tokens=True).strip()
                for row in new]


def load_model(model_dir: str | Path, device: str | None = None, hf_template: str = "vicuna_v1",
               torch_dtype: str | None = None, strict_fingerprint: bool = False) -> Any:
    """Our checkpoint, or a HF Llava directory imported (weights mapped by name, strict) into a temp checkpoint;
    preprocessing drift against the directory's fingerprint is printed (raised with `strict_fingerprint`)."""
    from vlm.loading import load_model_dir

    return load_model_dir(model_dir, device=device, torch_dtype=torch_dtype, hf_template=hf_template,
                          strict_fingerprint=strict_fingerprint)


def load_generator(model_dir: str, max_new_tokens: int, blank_images: bool = False, device: str | None = None,
                   hf_template: str = "vicuna_v1", torch_dtype: str | None = None,
                   strict_fingerprint: bool = False) -> ModelGenerator:
    """A batched generator over our checkpoint or a HF Llava directory."""
    from vlm.dtypes import inference_dtype

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = inference_dtype(torch_dtype, device)  # bf16 on a GPU unless asked otherwise
    model = load_model(model_dir, device, hf_template, dtype, strict_fingerprint)
    return ModelGenerator(model, max_new_tokens, blank_images)


class LazyGenerator:
    """Loads the model on the first batch, so a call with nothing left to answer (merge, score) loads none."""

    def __init__(self, factory: Callable[[], GenerateFn]) -> None:
        self._factory = factory
        self._generate: GenerateFn | None = None

    def __call__(self, items: list[EvalItem]) -> list[str | Failed]:
        if self._generate is None:
            self._generate = self._factory()
        return self._generate(items)

    @property
    def preprocessing_fingerprint(self) -> dict[str, Any] | None:
        """The loaded generator's fingerprint (None while nothing was loaded)."""
        return getattr(self._generate, "preprocessing_fingerprint", None)
