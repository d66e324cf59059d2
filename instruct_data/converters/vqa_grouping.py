"""Pack short-answer VQA questions into multi-turn LLaVA records, one image per record."""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from instruct_data.converters.common import IMAGE_TOKEN, SHORT_ANSWER_SUFFIX, turn


@dataclass(frozen=True)
class QAItem:
    """One question about one image with its single short answer."""

    image_key: Hashable
    question: str
    answer: str


def group_by_image(
    items: Iterable[QAItem],
    image_path: Callable[[Hashable], str],
    *,
    max_turns: int = 0,
    suffix: str = SHORT_ANSWER_SUFFIX,
) -> list[dict[str, Any]]:
    """Records grouping each image's questions in input order (images in order of first appearance).

    `max_turns` > 0 splits an image's questions into several records of at most that many question-answer
    pairs, with ids `<image>_<k>`; otherwise the id is the image key.
    """
    if max_turns < 0:
        raise ValueError(f"max_turns must be >= 0, got {max_turns}")
    groups: dict[Hashable, list[QAItem]] = {}
    for item in items:
        groups.setdefault(item.image_key, []).append(item)

    records: list[dict[str, Any]] = []
    for key, group in groups.items():
        size = max_turns or len(group)
        chunks = [group[i:i + size] for i in range(0, len(group), size)]
        for k, chunk in enumerate(chunks):
            conversations = []
            for j, item in enumerate(chunk):
                question = item.question.strip() + suffix
                conversations.append(turn("human", f"{IMAGE_TOKEN}\n{question}" if j == 0 else question))
                conversations.append(turn("gpt", item.answer.strip()))
            record_id = str(key) if len(chunks) == 1 else f"{key}_{k}"
            records.append({"id": record_id, "image": image_path(key), "conversations": conversations})
    return records
