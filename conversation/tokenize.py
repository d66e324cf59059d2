"""Spans to token ids and exact labels: per-span tokenization, K image ids per image, safe truncation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from conversation.errors import RecordError
from conversation.records import IMAGE_TOKEN, Conversation, Message
from conversation.templates import Span, Template, render_spans, stop_token_ids

__all__ = [
    "IGNORE_INDEX", "TokenizedSample", "spans_to_ids", "truncate", "check_no_special_text", "tokenize_conversation",
    "encode_prompt", "stop_token_ids",  # re-exported: callers building prompts want it beside encode_prompt
]

IGNORE_INDEX = -100


@dataclass
class TokenizedSample:
    """Token ids, labels (-100 where not supervised) and the number of image blocks."""

    input_ids: list[int]
    labels: list[int]
    num_images: int


def _special_id(tokenizer: Any, which: str, record_id: str) -> int | None:
    value = getattr(tokenizer, f"{which}_token_id", None)
    if value is None and which == "eos":
        raise RecordError(record_id, "template", "the template needs an eos token but the tokenizer has none")
    return value


def _doubles_leading_space(tokenizer: Any) -> bool:
    """True for SentencePiece-style tokenizers that always prepend '▁', so ' red' alone becomes '▁', '▁red'.

    A reply span starts with the space that separates it from the role marker; such a tokenizer adds
    that space itself, so the span is tokenized without it (giving '▁red', as in the full string).
    """
    cached = getattr(tokenizer, "_instruct_data_doubles_space", None)
    if cached is None:
        plain, spaced = tokenizer(["red", " red"], add_special_tokens=False)["input_ids"]
        cached = len(spaced) > len(plain) and spaced[-len(plain):] == plain and tokenizer.decode(plain).startswith(("red", " red"))
        cached = cached and tokenizer.convert_ids_to_tokens(plain)[0].startswith("\u2581")
        try:
            tokenizer._instruct_data_doubles_space = cached
        except AttributeError:  # a tokenizer that refuses new attributes: probe every time
            pass
    return bool(cached)


ImageTokens = int | Sequence[int]  # K for every image, or one count per image (dynamic resolution)


def _image_counts(num_image_tokens: ImageTokens, n_images: int, record_id: str) -> list[int]:
    if isinstance(num_image_tokens, int):
        return [num_image_tokens] * n_images
    counts = [int(k) for k in num_image_tokens]
    if len(counts) != n_images:
        raise RecordError(record_id, "image", f"{n_images} image blocks rendered for {len(counts)} image token count(s)")
    if any(k < 1 for k in counts):
        raise ValueError(f"num_image_tokens must be >= 1 per image, got {counts}")
    return counts


def spans_to_ids(
    spans: Sequence[Span], tokenizer: Any, *, image_token_id: int, num_image_tokens: ImageTokens, record_id: str
) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels, image block starts): each text span tokenized alone, each `<image>` as its K image ids.

    `num_image_tokens`: one K for all images, or a list with each image's own count (anyres), in order.
    """
    if isinstance(num_image_tokens, int) and num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    # Plan first: ("text", piece, supervised) | ("id", id, supervised) | ("image",); then one batched tokenizer call.
    plan: list[tuple] = []
    texts: list[str] = []
    for span in spans:
        if span.token is not None:
            tid = _special_id(tokenizer, span.token, record_id)
            if tid is not None:  # a tokenizer without bos: nothing to add
                plan.append(("id", tid, span.supervised))
            continue
        pieces = span.text.split(IMAGE_TOKEN)
        if span.supervised and len(pieces) > 1:
            raise RecordError(record_id, "template", f"{IMAGE_TOKEN} inside a supervised span")
        for k, piece in enumerate(pieces):
            if k > 0:
                plan.append(("image",))
            if piece:
                plan.append(("text", len(texts), span.supervised))
                texts.append(piece)
    if texts and _doubles_leading_space(tokenizer):
        texts = [t[1:] if t.startswith(" ") and len(t) > 1 else t for t in texts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    counts = iter(_image_counts(num_image_tokens, sum(step[0] == "image" for step in plan), record_id))
    ids: list[int] = []
    labels: list[int] = []
    image_starts: list[int] = []
    for step in plan:
        if step[0] == "image":
            image_starts.append(len(ids))
            count = next(counts)
            ids.extend([image_token_id] * count)
            labels.extend([IGNORE_INDEX] * count)
            continue
        piece_ids = [step[1]] if step[0] == "id" else list(encoded[step[1]])
        if step[0] == "text":
            piece = texts[step[1]]
            if not piece_ids and piece.strip():  # whitespace some tokenizers drop is harmless; words are not
                raise RecordError(record_id, "tokenize", f"text {piece[:40]!r} tokenizes to nothing")
            if image_token_id in piece_ids:
                raise RecordError(record_id, "tokenize", f"text {piece[:40]!r} yields the image token id {image_token_id}")
        ids.extend(piece_ids)
        labels.extend(piece_ids if step[2] else [IGNORE_INDEX] * len(piece_ids))
    return ids, labels, image_starts


def truncate(
    ids: list[int], labels: list[int], image_starts: list[int], num_image_tokens: ImageTokens, max_length: int,
    record_id: str,
) -> tuple[list[int], list[int]]:
    """Cut to `max_length` without cutting an image block; RecordError if images or all supervision are lost."""
    if len(ids) <= max_length:
        return ids, labels
    last = num_image_tokens if isinstance(num_image_tokens, int) else (list(num_image_tokens) or [0])[-1]
    if image_starts and image_starts[-1] + last > max_length:
        raise RecordError(record_id, "max_length", "images do not fit in max_length")
    ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE_INDEX for x in labels):
        raise RecordError(record_id, "max_length", f"no supervised token left after truncation to {max_length}")
    return ids, labels


def check_no_special_text(conv: Conversation, tokenizer: Any) -> None:
    """RecordError if a message spells a special token (e.g. `</s>` in ShareGPT HTML): it would tokenize as a control id."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t and t != IMAGE_TOKEN]
    for i, m in enumerate(conv.messages):
        found = next((t for t in specials if t in m.content), None)
        if found is not None:
            raise RecordError(conv.id, f"turn {i}", f"text contains the special token {found!r}")


def tokenize_conversation(
    conv: Conversation,
    template: str | Template,
    tokenizer: Any,
    *,
    image_token_id: int,
    num_image_tokens: ImageTokens,
    max_length: int | None = None,
) -> TokenizedSample:
    """Render, tokenize span by span, expand images, mask labels and truncate; RecordError naming `conv.id` on failure.

    `num_image_tokens`: K, or one count per image of `conv.images` (anyres: counted from each image's size).
    """
    check_no_special_text(conv, tokenizer)
    if not isinstance(num_image_tokens, int) and len(num_image_tokens) != len(conv.images):
        raise RecordError(conv.id, "image", f"{len(num_image_tokens)} image token count(s) for {len(conv.images)} image(s)")
    spans = render_spans(conv.messages, template, tokenizer, record_id=conv.id)
    ids, labels, image_starts = spans_to_ids(
        spans, tokenizer, image_token_id=image_token_id, num_image_tokens=num_image_tokens, record_id=conv.id
    )
    if len(image_starts) != len(conv.images):
        raise RecordError(conv.id, "image", f"{len(image_starts)} image blocks rendered for {len(conv.images)} image(s)")
    n_replies = sum(m.role == "assistant" for m in conv.messages)
    if n_replies and all(x == IGNORE_INDEX for x in labels):
        raise RecordError(conv.id, "labels", "no supervised token (the sample would train at loss 0)")
    if max_length is not None:
        ids, labels = truncate(ids, labels, image_starts, num_image_tokens, max_length, conv.id)
    return TokenizedSample(ids, labels, len(image_starts))


def encode_prompt(
    messages: Sequence[Message], template: str | Template, tokenizer: Any, *, image_token_id: int,
    num_image_tokens: ImageTokens,
) -> list[int]:
    """Ids of a prompt ending with the assistant prefix (for chat and eval); the last message is the user's."""
    spans = render_spans(messages, template, tokenizer, generation=True, record_id="prompt")
    ids, _, _ = spans_to_ids(spans, tokenizer, image_token_id=image_token_id, num_image_tokens=num_image_tokens, record_id="prompt")
    return ids
