"""A multi-turn chat with a vision-language model: history, attached images, context-length trimming."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from conversation.errors import ImageLoadError
from conversation.records import Message, is_valid_unicode
from conversation.templates import stop_token_ids
from vision_encoders.preprocess import ImageProcessor
from vlm.inputs import Pixels, image_prefix, load_pixels, prompt_batch, prompt_ids

if TYPE_CHECKING:
    from vlm.model import VisionLanguageModel


class ChatError(Exception):
    """A user-facing problem (bad image, bad model directory): printed as one line, never a traceback."""


@dataclass
class Turn:
    question: str
    answer: str | None = None  # None: the question being asked
    images: list[Pixels] = field(default_factory=list)


def load_chat_image(path: str | Path, processor: ImageProcessor) -> Pixels:
    """One image file as model pixels, or ChatError saying why it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise ChatError(f"image not found: {path}")
    if path.is_dir():
        raise ChatError(f"not an image file (a directory): {path}")
    try:
        return load_pixels(path, processor)
    except ImageLoadError as err:
        raise ChatError(f"cannot read image {path}: {err.reason}") from None


class ChatSession:
    """Holds the conversation; `ask` renders it with the checkpoint's template and generates a reply."""

    def __init__(self, model: "VisionLanguageModel", max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.turns: list[Turn] = []
        self.pending_images: list[Pixels] = []
        self.context_length = self._context_length()

    def _context_length(self) -> int:
        llm_config = self.model.llm.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(llm_config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    def add_image(self, path: str | Path) -> None:
        self.pending_images.append(load_chat_image(path, self.model.image_processor))

    def reset(self) -> None:
        self.turns.clear()
        self.pending_images.clear()

    def _encode(self, turns: list[Turn]) -> tuple[list[int], list[Pixels]]:
        messages: list[Message] = []
        images: list[Pixels] = []
        for turn in turns:
            messages.append(Message(role="user", content=image_prefix(self.model.config, len(turn.images)) + turn.question))
            images.extend(turn.images)
            if turn.answer is not None:
                messages.append(Message(role="assistant", content=turn.answer))
        return prompt_ids(self.model, messages, [image.size for image in images]), images

    def _fit(self, question: str) -> tuple[list[int], list[Pixels], int]:
        """Encode history + question, dropping the oldest turns until the prompt fits; (ids, images, dropped)."""
        if not is_valid_unicode(question):  # e.g. invalid UTF-8 bytes on the command line
            raise ChatError("the question is not valid Unicode text (invalid UTF-8 or a lone surrogate)")
        current = Turn(question=question, images=list(self.pending_images))
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
        return ids, images, dropped

    def prepare(self, question: str) -> tuple[list[int], list[torch.Tensor], int]:
        """Encode history + question, dropping the oldest turns until the prompt fits: (ids, every image's pixels,
        turns dropped)."""
        ids, images, dropped = self._fit(question)
        return ids, [image.values for image in images], dropped

    @torch.no_grad()
    def ask(self, question: str, streamer=None) -> tuple[str, int]:
        """Answer `question` about the attached images; returns (answer, oldest turns dropped to fit)."""
        ids, images, dropped = self._fit(question)
        prompt = prompt_batch(self.model, [ids], [images])
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
        self.turns.append(Turn(question=question, answer=answer, images=list(self.pending_images)))
        self.pending_images.clear()
        return answer, dropped
