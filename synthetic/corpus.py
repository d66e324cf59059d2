"""The language-pretraining corpus: scene descriptions, facts, and Q&A rendered in the vicuna chat format."""
from __future__ import annotations

import random
from collections.abc import Iterator

from synthetic.questions import SHORT_ANSWER_SUFFIX, sample_questions
from synthetic.text import brief_caption, detailed_description
from synthetic.textonly import FACT_KINDS, sample_fact
from synthetic.world import SEEN_PAIRS, Scene, scene_rng

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
DOC_SEPARATOR = "\n\n"  # documents never contain a blank line, so the corpus splits back into documents


def vicuna_chat(turns: list[tuple[str, str]]) -> str:
    """`{SYS} USER: q ASSISTANT: a</s>USER: ...` exactly as the vicuna_v1 template renders it."""
    body = "".join(f"USER: {q} ASSISTANT: {a}</s>" for q, a in turns)
    return f"{VICUNA_SYSTEM} {body}"


def corpus_documents(scenes: list[Scene], seed: int, facts_per_kind: int) -> Iterator[str]:
    """Per training scene: a caption, a description and a reading-comprehension chat; then facts and fact chats.

    The reading-comprehension chats ask the same short-answer questions as the VQA data, about a scene given in
    words: the LLM learns the question skills from text, and alignment only has to make images read like text.
    """
    absent = list(SEEN_PAIRS)
    for scene in scenes:
        rng = scene_rng(seed, scene.split, scene.id, "corpus")
        description = detailed_description(scene)
        yield brief_caption(scene, rng)
        yield description
        qas = sample_questions(scene, rng, 3, absent)
        turns = [(f"{description}\n{qas[0].question}{SHORT_ANSWER_SUFFIX}", qas[0].answer)]
        turns += [(qa.question + SHORT_ANSWER_SUFFIX, qa.answer) for qa in qas[1:]]
        yield vicuna_chat(turns)
    rng = random.Random(f"{seed}/corpus/facts")
    for kind in FACT_KINDS:
        for _ in range(facts_per_kind):
            fact = sample_fact(rng, kind)
            yield fact.sentence
            short = rng.random() < 0.5
            yield vicuna_chat([(fact.question + (SHORT_ANSWER_SUFFIX if short else ""),
                                fact.answer if short else fact.sentence)])
