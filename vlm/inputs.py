"""One way from an image file and a prompt to model input: pixels (the size check always on), image-token counts, `Batch`.

The dataset, the feature-cache prefill, eval, chat and generation all go through here:
- `load_pixels(path_or_image, processor)`: an image file (or decoded image) -> `Pixels` ([n, 3, S, S], n = 1 unless
  anyres, plus the (height, width) its tokens are counted from); a bad, bomb-sized or too extreme image raises
  `ImageLoadError`, never the processor's `ValueError`.
- `image_token_counter(model)`: an `ImageTokenCounter`, always a callable of an image's size: K for every image, or
  (anyres) the count of that size. `checkpoint_token_counter` reads the same from a checkpoint without weights.
- `prompt_ids(model, messages, sizes)` renders a prompt; `prompt_batch(model, rows, images)` left-pads prompts and
  their images into one `Batch`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from PIL import Image

from conversation.errors import ImageLoadError
from conversation.images import load_image
from conversation.records import Message
from conversation.tokenize import ImageTokens, encode_prompt
from vision_encoders.preprocess import ImageProcessor
from vlm.batch import Batch
from vlm.config import VLMConfig

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel

Size = tuple[int, int]  # (height, width), after RGB conversion and EXIF orientation


@dataclass(frozen=True)
class ImageTokenCounter:
    """An image's (height, width) -> its number of image tokens: `k` for every image, or (`per_size` set, anyres)
    counted from the size by the formula the model uses. Picklable (data-loader workers)."""

    k: int = 0
    per_size: Callable[[Size], int] | None = None
    tiles_per_size: Callable[[Size], int] | None = None  # anyres: the tiles the vision tower sees per image

    def tiles(self, sizes: Sequence[Size] | None, n_images: int) -> int:
        """Vision-tower tiles of a sample's images: one an image, or (anyres) each image's tiles from its size."""
        if self.tiles_per_size is None or sizes is None:
            return n_images
        return sum(self.tiles_per_size(tuple(size)) for size in sizes)  # type: ignore[arg-type]

    @classmethod
    def of(cls, tokens: "int | Callable[[Size], int] | ImageTokenCounter") -> "ImageTokenCounter":
        """A counter from K, a per-size function, or a counter."""
        if isinstance(tokens, ImageTokenCounter):
            return tokens
        if isinstance(tokens, int):
            return cls(k=tokens)
        # a geometry's bound `num_tokens` (anyres) brings its `num_tiles` with it
        tiles = getattr(getattr(tokens, "__self__", None), "num_tiles", None)
        return cls(per_size=tokens, tiles_per_size=tiles if callable(tiles) else None)

    @property
    def needs_size(self) -> bool:
        """Whether counting needs each image's size (read from its header before tokenization)."""
        return self.per_size is not None

    def __call__(self, size: Size | None = None) -> int:
        if self.per_size is None:
            return self.k
        if size is None:
            raise ValueError("an anyres model counts image tokens from the image's size; none was given")
        return self.per_size(tuple(size))  # type: ignore[arg-type]

    def per_image(self, n_images: int, sizes: Sequence[Size] | None = None) -> list[int]:
        """Each image's count (`sizes`: the images' sizes, needed when counting per size)."""
        if self.per_size is None:
            return [self.k] * n_images
        return self.for_images(sizes)  # type: ignore[return-value]

    def for_images(self, sizes: Sequence[Size] | None) -> ImageTokens:
        """What `conversation.tokenize` takes: K (for every image), or each image's count from its size."""
        if self.per_size is None:
            return self.k
        if sizes is None:
            raise ValueError("an anyres model counts image tokens from each image's size; none were given")
        return [self(size) for size in sizes]


def image_token_counter(model: "VisionLanguageModel") -> ImageTokenCounter:
    """The model's counter: K, or (anyres) its image processor's tiling geometry."""
    config = model.config
    if not config.vision.anyres:
        return ImageTokenCounter(k=config.num_image_tokens)
    return _anyres_counter(model.image_processor, config)


def checkpoint_token_counter(directory: str | Path, config: VLMConfig) -> ImageTokenCounter:
    """The counter of a saved checkpoint, from its config (and image_processor.json), without loading weights."""
    if not config.vision.anyres:
        return ImageTokenCounter(k=config.num_image_tokens)
    from vlm.checkpoint import IMAGE_PROCESSOR_FILE

    return _anyres_counter(ImageProcessor.load(Path(directory) / IMAGE_PROCESSOR_FILE), config)


def _anyres_counter(processor: ImageProcessor, config: VLMConfig) -> ImageTokenCounter:
    geometry = processor.anyres_geometry(grid_side=math.isqrt(config.num_image_tokens))
    return ImageTokenCounter(per_size=geometry.num_tokens, tiles_per_size=geometry.num_tiles)


# ------------------------------------------------------------------------------------------------- pixels
@dataclass(frozen=True)
class Pixels:
    """One image as model input: `values` [n, 3, S, S] (n = 1, or anyres: its tiles) and its `size` (height,
    width), which its image-token count is computed from."""

    values: torch.Tensor
    size: Size


def open_image(source: str | Path | Image.Image, processor: ImageProcessor) -> Image.Image:
    """A decoded image, checked by `processor.size_problem` (a file before any pixel is decoded); ImageLoadError
    naming the file (or `<in-memory image>`) and why."""
    if isinstance(source, Image.Image):
        problem = processor.size_problem(*source.size)
        if problem:
            raise ImageLoadError("<in-memory image>", f"extreme aspect ratio: {problem}")
        return source
    return load_image(Path(source), check_size=processor.size_problem)


def load_pixels(source: str | Path | Image.Image, processor: ImageProcessor) -> Pixels:
    """An image file (or decoded image) as model pixels, the size check always on (see `open_image`)."""
    values, size = processor.process(open_image(source, processor))
    return Pixels(values, (int(size[0]), int(size[1])))


def stack_pixels(images: Sequence[Pixels]) -> torch.Tensor | None:
    """Every image's pixels in order, [sum of n, 3, S, S] (None without images)."""
    return torch.cat([image.values for image in images]) if images else None


# ------------------------------------------------------------------------------------------------- prompts
def image_prefix(config: VLMConfig, n_images: int) -> str:
    """The placeholders a prompt puts before its text: one `image_token` line per image."""
    return (config.image_token + "\n") * n_images


def prompt_ids(model: "VisionLanguageModel", messages: list[Message], sizes: Sequence[Size]) -> list[int]:
    """`messages` rendered by the model's template up to the assistant prefix, each image's tokens counted from
    its size (`sizes`: every image of the messages, in order)."""
    config = model.config
    counts = image_token_counter(model).for_images(sizes)
    return encode_prompt(messages, config.template, model.tokenizer, image_token_id=config.image_token_id,
                         num_image_tokens=counts)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, padding on the left so every prompt ends at the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def prompt_batch(model: "VisionLanguageModel", rows: list[list[int]], images: list[list[Pixels]]) -> Batch:
    """Prompts (token ids, see `prompt_ids`) and each prompt's images as one left-padded `Batch` for `generate`;
    pixels in the model's dtype, image sizes carried for anyres."""
    if len(rows) != len(images):
        raise ValueError(f"{len(rows)} prompts but images for {len(images)}")
    config = model.config
    ids, mask = left_pad(rows, config.pad_token_id)
    flat = [image for row in images for image in row]
    pixels = stack_pixels(flat)
    return tensors_batch(model, ids, mask, pixels.to(model.dtype) if pixels is not None else None,
                         [len(row) for row in images], [image.size for image in flat] if config.vision.anyres else None)


def tensors_batch(
    model: "VisionLanguageModel",
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_counts: torch.Tensor | list[int] | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
) -> Batch:
    """Left-padded prompt tensors as a `Batch`; without `image_counts`, each row's images are its image tokens / K.

    anyres (`image_sizes` given): pixel_values holds tiles, so one prompt takes all images, several need image_counts.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if image_counts is None and image_sizes is not None:
        if input_ids.shape[0] != 1:
            raise ValueError("anyres generation over several prompts needs image_counts (images per prompt)")
        image_counts = [len(image_sizes)]
    if image_counts is None and pixel_values is not None:
        image_counts = (input_ids == model.config.image_token_id).sum(dim=1) // model.config.num_image_tokens
    if image_counts is not None:
        image_counts = torch.as_tensor(image_counts, dtype=torch.long)
    return Batch(input_ids, attention_mask, image_counts=image_counts, pixel_values=pixel_values,
                 image_sizes=None if image_sizes is None else [tuple(s) for s in image_sizes])
