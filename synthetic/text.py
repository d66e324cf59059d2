"""Natural-language renderings of scenes: brief captions, detailed descriptions, CLIP captions, number words."""
from __future__ import annotations

import random

from synthetic.world import Scene, SceneObject, position_phrase

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)

BACKGROUND_PHRASES: dict[str, str] = {
    "plain": "a plain light background",
    "gradient": "a light gradient background",
    "striped": "a light striped background",
    "checkered": "a light checkered background",
    "dotted": "a light dotted background",
}

# Brief-description prompts in the spirit of LLaVA's alignment set (written for this world).
BRIEF_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Give a short description of the picture.",
    "Summarize the image in one sentence.",
    "What is shown in this image? Answer briefly.",
    "Write a brief caption for the image.",
    "Provide a concise summary of the picture.",
    "Describe the scene in a few words.",
    "Share a short caption of what you see.",
    "Render a clear and concise summary of the image.",
    "Briefly tell me what the picture contains.",
)

DETAIL_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Describe every object in the picture and where it is.",
    "Give a detailed description of this image.",
    "What objects are in the image? Describe each one.",
    "Explain what you see in the picture, object by object.",
)


def a_or_an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: SceneObject, with_size: bool = True) -> str:
    """`a large red circle` (or `a red circle` without the size)."""
    words = f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"
    return f"{a_or_an(words)} {words}"


def where_phrase(obj: SceneObject) -> str:
    """`at the top left` / `in the center`."""
    return "in the center" if obj.position == "center" else f"at the {obj.position}"


def join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def count_phrase(n: int) -> str:
    return f"{NUMBER_WORDS[n]} object" + ("" if n == 1 else "s")


def brief_caption(scene: Scene, rng: random.Random) -> str:
    """One sentence naming every object with size, colour and position, in one of a few phrasings."""
    parts = [f"{object_phrase(o)} {where_phrase(o)}" for o in scene.objects]
    style = rng.randrange(3)
    if style == 0:
        text = join_list(parts)
        return text[0].upper() + text[1:] + "."
    if style == 1:
        return f"{count_phrase(len(parts)).capitalize()}: {join_list(parts)}."
    return f"A picture of {join_list(parts)} on {BACKGROUND_PHRASES[scene.background]}."


def coco_references(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """Five different human-like reference captions for the COCO-style caption benchmark."""
    objs = scene.objects
    names = join_list([object_phrase(o) for o in objs])
    located = join_list([f"{object_phrase(o)} {where_phrase(o)}" for o in objs])
    short = join_list([object_phrase(o, with_size=False) for o in objs])
    candidates = [
        f"{located[0].upper()}{located[1:]}.",
        f"A picture of {located} on {BACKGROUND_PHRASES[scene.background]}.",
        f"There {'is' if len(objs) == 1 else 'are'} {count_phrase(len(objs))} in the image: {names}.",
        f"{short[0].upper()}{short[1:]} on {BACKGROUND_PHRASES[scene.background]}.",
        f"An image showing {located}.",
        f"{count_phrase(len(objs)).capitalize()}: {names}.",
    ]
    rng.shuffle(candidates)
    return candidates[:n]


def detailed_description(scene: Scene, stated_count: int | None = None) -> str:
    """Several sentences: count, background, then each object with its size, colour and position.

    `stated_count` overrides the number in the first sentence (a corrective pair's wrong count)."""
    n = len(scene.objects) if stated_count is None else stated_count
    verb = "is" if n == 1 else "are"
    sentences = [f"There {verb} {count_phrase(n)} on {BACKGROUND_PHRASES[scene.background]}."]
    for obj in scene.objects:
        phrase = object_phrase(obj)
        sentences.append(f"{phrase[0].upper()}{phrase[1:]} is {where_phrase(obj)}.")
    return " ".join(sentences)


def clip_caption(scene: Scene) -> str:
    """Terse, complete, canonical caption for contrastive ViT pretraining: every attribute of every object."""
    return "; ".join(f"{o.size} {o.colour} {o.shape} {o.position}" for o in scene.objects)


def cell_caption(obj: SceneObject | None, row: int, col: int) -> str:
    """Caption of one grid cell for the dense contrastive objective: `small red circle top left`, `empty center`."""
    where = position_phrase(row, col)
    return f"{obj.size} {obj.colour} {obj.shape} {where}" if obj is not None else f"empty {where}"
