"""A multi-turn chat with a vision-language model: history, attached images, context-length trimming."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from conversation.images import ImageLoadError, load_image
from conversation.records import Message, is_valid_unicode
from conversation.templates import stop_token_ids
from conversation.tokenize import encode_prompt
from vision_encoders.preprocess import to_rgb
from vlm.batch import Batch


class ChatError(Exception):
    """A user-facing problem (bad image, bad model directory): printed as one line, never a traceback."""


@dataclass
class Turn:
    question: str
    answer: str
    images: list[torch.Tensor] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) per image (anyres counts from it)


def load_chat_image(path: str | Path, image_processor: Callable) -> torch.Tensor:
    """Decode one image file into model pixels, or raise ChatError saying why."""
    return load_chat_image_sized(path, image_processor)[0]


def load_chat_image_sized(path: str | Path, image_processor: Callable) -> tuple[torch.Tensor, tuple[int, int]]:
    """(pixels, (height, width)); anyres pixels are the image's tiles [n, 3, S, S]."""
    path = Path(path)
    if not path.exists():
        raise ChatError(f"image not found: {path}")
    if path.is_dir():
        raise ChatError(f"not an image file (a directory): {path}")
    try:
        image = load_image(path, check_size=getattr(image_processor, "size_problem", None))
    except ImageLoadError as err:
        raise ChatError(f"cannot read image {path}: {err.reason}") from None
    rgb = to_rgb(image)
    return image_processor(rgb), (rgb.height, rgb.width)


class ChatSession:
    """Holds the conversation; `ask` renders it with the checkpoint's template and generates a reply."""

    def __init__(self, model, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.turns: list[Turn] = []
        self.pending_images: list[torch.Tensor] = []
        self.pending_sizes: list[tuple[int, int]] = []
        self.context_length = self._context_length()

    def _context_length(self) -> int:
        llm_config = self.model.llm.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(llm_config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    def add_image(self, path: str | Path) -> None:
        pixels, size = load_chat_image_sized(path, self.model.image_processor)
        self.pending_images.append(pixels)
        self.pending_sizes.append(size)

    def reset(self) -> None:
        self.turns.clear()
        self.pending_images.clear()
        self.pending_sizes.clear()

    @property
    def _anyres(self) -> bool:
        return bool(getattr(self.model.config.vision, "anyres", False))

    def _messages(self, turns: list[Turn]) -> tuple[list[Message], list[torch.Tensor]]:
        messages: list[Message] = []
        images: list[torch.Tensor] = []
        for turn in turns:
            prefix = "<image>\n" * len(turn.images)
            messages.append(Message(role="user", content=prefix + turn.question))
            images.extend(turn.images)
            if turn.answer is not None:
                messages.append(Message(role="assistant", content=turn.answer))
        return messages, images

    def _encode(self, turns: list[Turn]) -> tuple[list[int], list[torch.Tensor]]:
        messages, images = self._messages(turns)
        config = self.model.config
        counts: int | list[int] = config.num_image_tokens
        if self._anyres:
            from vlm.anyres_features import image_token_counter

            count = image_token_counter(self.model)
            counts = [count(size) for turn in turns for size in turn.sizes]
        ids = encode_prompt(
            messages,
            config.template,
            self.model.tokenizer,
            image_token_id=config.image_token_id,
            num_image_tokens=counts,
        )
        return ids, images

    def prepare(self, question: str) -> tuple[list[int], list[torch.Tensor], int]:
        """Encode history + question, dropping the oldest turns until the prompt fits. Returns dropped count."""
        if not is_valid_unicode(question):  # e.g. invalid UTF-8 bytes on the command line
            raise ChatError("the question is not valid Unicode text (invalid UTF-8 or a lone surrogate)")
        current = Turn(question=question, answer=None, images=list(self.pending_images),  # type: ignore[arg-type]
                       sizes=list(self.pending_sizes))
        budget = self.context_length - self.max_new_tokens
        history = list(self.turns)
        dropped = 0
        while True:
            ids, images = self._encode(history + [current])
            if len(ids) <= budget:
                break
            if not history:
                raise ChatError(
                    f"the question and its images need {len(ids)} tokens, more than the model's context "
                    f"({self.context_length}) minus max_new_tokens ({self.max_new_tokens})"
                )
            history.pop(0)
            dropped += 1
        self.turns = history
        self._sizes = [size for turn in history + [current] for size in turn.sizes]
        return ids, images, dropped

    @torch.no_grad()
    def ask(self, question: str, streamer=None) -> tuple[str, int]:
        """Answer `question` about the attached images; returns (answer, oldest turns dropped to fit)."""
        ids, images, dropped = self.prepare(question)
        input_ids = torch.tensor([ids])
        anyres = self._anyres
        pixels = (torch.cat if anyres else torch.stack)(images) if images else None
        prompt = Batch(input_ids, torch.ones_like(input_ids), image_counts=torch.tensor([len(images)]),
                       pixel_values=pixels, image_sizes=list(self._sizes) if anyres else None)
        do_sample = self.temperature > 0
        new_tokens = self.model.generate(
            prompt.to(next(self.model.parameters()).device),
            max_new_tokens=self.max_new_tokens,
            do_sample=do_sample,
            temperature=self.temperature if do_sample else 1.0,
            top_p=self.top_p,
            streamer=streamer,
            eos_token_id=stop_token_ids(self.model.config.template, self.model.tokenizer),
        )
        answer = self.model.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()
        self.turns.append(Turn(question=question, answer=answer, images=list(self.pending_images),
                               sizes=list(self.pending_sizes)))
        self.pending_images.clear()
        self.pending_sizes.clear()
        return answer, dropped
